/* data.c - IDX files (the MNIST family's format) read through zlib, with
 * errors that say which file and what is wrong with it. */
#include "nn/nn_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* Read up to n bytes, *got says how many (fewer at the end of the file).
 * Fails only on corrupt compressed data. */
static lps_status read_some(gzFile f, const char *path, void *buf, size_t n, size_t *got)
{
    *got = 0;
    while (*got < n) {
        unsigned chunk = n - *got > (1u << 30) ? (1u << 30) : (unsigned)(n - *got);
        int r = gzread(f, (char *)buf + *got, chunk);
        if (r < 0) {
            int err;
            return lps_fail(LPS_EFORMAT, "%s: corrupt gzip data after %zu bytes (%s)", path, *got,
                            gzerror(f, &err));
        }
        if (r == 0) break;
        *got += (size_t)r;
    }
    return LPS_OK;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Open, check gzip and the magic number (type 0x08 = unsigned bytes, ndims),
 * and read the dimensions. */
static gzFile open_idx(const char *path, int ndims, uint32_t *dims)
{
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        lps_fail(LPS_EIO, "%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
        return NULL;
    }
    gzbuffer(f, 1 << 16);
    unsigned char head[4 + 4 * 3];
    size_t got;
    size_t need = 4 + 4 * (size_t)ndims;
    if (read_some(f, path, head, 4, &got)) goto fail;
    if (gzdirect(f)) {
        lps_fail(LPS_EFORMAT, "%s: not a gzip file (%s)", path,
                 got ? "the IDX files are read gzip-compressed" : "it is empty");
        goto fail;
    }
    if (got < 4) {
        lps_fail(LPS_EFORMAT, "%s: truncated: the header needs %zu bytes, the data has %zu", path,
                 need, got);
        goto fail;
    }
    uint32_t magic = be32(head), want = 0x0800u | (uint32_t)ndims;
    if (magic != want) {
        lps_fail(LPS_EFORMAT, "%s: wrong magic number 0x%08x, expected 0x%08x (IDX unsigned bytes, "
                 "%d dimension%s)", path, magic, want, ndims, ndims > 1 ? "s" : "");
        goto fail;
    }
    if (read_some(f, path, head + 4, need - 4, &got)) goto fail;
    if (got < need - 4) {
        lps_fail(LPS_EFORMAT, "%s: truncated: the header needs %zu bytes, the data has %zu", path,
                 need, got + 4);
        goto fail;
    }
    for (int i = 0; i < ndims; i++) dims[i] = be32(head + 4 + 4 * i);
    return f;
fail:
    gzclose(f);
    return NULL;
}

static void *truncated(gzFile f, lps_tensor *t, const char *path, const char *what, int64_t need,
                       int64_t have)
{
    lps_fail(LPS_EFORMAT, "%s: truncated: %s need %lld bytes after the header, the data has %lld",
             path, what, (long long)need, (long long)have);
    lps_tensor_free(t);
    gzclose(f);
    return NULL;
}

lps_tensor *lps_idx_read_images(const char *path)
{
    uint32_t d[3];
    gzFile f = open_idx(path, 3, d);
    if (!f) return NULL;
    if (d[1] == 0 || d[2] == 0 || d[1] > 4096 || d[2] > 4096 || d[0] > (1u << 28)) {
        lps_fail(LPS_EFORMAT, "%s: wrong dimensions %u x %u x %u (images need 1..4096 rows and "
                 "columns)", path, d[0], d[1], d[2]);
        gzclose(f);
        return NULL;
    }
    int64_t row = (int64_t)d[1] * d[2];
    /* Not zeroed: every element is written before the tensor is returned,
     * and a header claiming more images than the file holds (31 bytes can
     * claim 3 GB) then costs no more memory than the bytes it does hold. */
    int64_t shape[2] = {(int64_t)d[0], row};
    lps_tensor *t = lps_tensor_empty(2, shape);
    if (!t) {
        gzclose(f);
        return NULL;
    }
    char what[96];
    snprintf(what, sizeof what, "%u images of %ux%u pixels", d[0], d[1], d[2]);
    /* A chunk of bytes at a time, so the bytes never exist twice in memory. */
    unsigned char buf[1 << 16];
    int64_t total = (int64_t)d[0] * row, done = 0;
    while (done < total) {
        size_t n = total - done < (int64_t)sizeof buf ? (size_t)(total - done) : sizeof buf, got;
        if (read_some(f, path, buf, n, &got)) {
            lps_tensor_free(t);
            gzclose(f);
            return NULL;
        }
        for (size_t i = 0; i < got; i++) t->data[done + (int64_t)i] = (float)buf[i] / 255.0f;
        done += (int64_t)got;
        if (got < n) return truncated(f, t, path, what, total, done);
    }
    gzclose(f);
    return t;
}

lps_tensor *lps_idx_read_labels(const char *path)
{
    uint32_t d[1];
    gzFile f = open_idx(path, 1, d);
    if (!f) return NULL;
    if (d[0] > (1u << 28)) {
        lps_fail(LPS_EFORMAT, "%s: wrong dimensions: %u labels", path, d[0]);
        gzclose(f);
        return NULL;
    }
    int64_t n = d[0];
    lps_tensor *t = lps_tensor_empty(1, &n); /* not zeroed, as the images */
    if (!t) {
        gzclose(f);
        return NULL;
    }
    char what[64];
    snprintf(what, sizeof what, "%u labels", d[0]);
    unsigned char buf[1 << 12];
    int64_t done = 0;
    while (done < n) {
        size_t k = n - done < (int64_t)sizeof buf ? (size_t)(n - done) : sizeof buf, got;
        if (read_some(f, path, buf, k, &got)) {
            lps_tensor_free(t);
            gzclose(f);
            return NULL;
        }
        for (size_t i = 0; i < got; i++) t->data[done + (int64_t)i] = (float)buf[i];
        done += (int64_t)got;
        if (got < k) return truncated(f, t, path, what, n, done);
    }
    gzclose(f);
    return t;
}
