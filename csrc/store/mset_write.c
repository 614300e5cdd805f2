/* mset_write.c - appending records to a ModelSet: encode every tensor into
 * one buffer, write it at the end in one go, sync, then index it. */
#define _DEFAULT_SOURCE /* fdatasync */
#include "store/mset_format.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define ULL(x) ((unsigned long long)(x))

/* ---------------------------------------------------------------- writing */

/* Write a finished record at the end; on failure, cut the file back so no
 * partial record stays behind. */
static lps_status put_record(lps_mset *ms, const unsigned char *buf, const ms_rec_hdr *h,
                             int64_t *index)
{
    ms_entry e;
    ms_entry_from_hdr(&e, ms->end, h);
    /* reserve the index slot first: once written, the record must be kept */
    if (!ms_push(ms, &e)) return lps_fail(LPS_ENOMEM, "%s: out of memory", ms->path);
    ms->count--;
    if (ms->index_on_disk) {
        /* the index is rebuilt from memory at the next flush */
        if (ftruncate(ms->fd, (off_t)ms->end) != 0)
            return lps_fail(LPS_EIO, "%s: cannot drop the old index: %s", ms->path, strerror(errno));
        ms->index_on_disk = 0;
    }
    lps_status s = ms_write(ms->fd, ms->end, buf, (size_t)h->length, ms->path);
    if (!s && ms->opts.sync && fdatasync(ms->fd) != 0)
        s = lps_fail(LPS_EIO, "%s: fdatasync failed: %s", ms->path, strerror(errno));
    if (s) {
        if (ftruncate(ms->fd, (off_t)ms->end) != 0) { /* keep the first error */ }
        return s;
    }
    ms->idx[ms->count++] = e;
    ms->end += h->length;
    ms->size = ms->end;
    if (index) *index = ms->count - 1;
    return LPS_OK;
}

lps_status lps_mset_append(lps_mset *ms, const char *meta, size_t meta_len,
                           const lps_mset_input *in, int n, int64_t *index)
{
    const char *op = "modelset append";
    if (!ms->writable) return lps_fail(LPS_EINVAL, "%s: %s is open read-only", op, ms->path);
    if (n < 0 || n > LPS_MSET_MAX_TENSORS)
        return lps_fail(LPS_EINVAL, "%s: %d tensors (limit %d)", op, n, LPS_MSET_MAX_TENSORS);
    if (meta_len > LPS_MSET_MAX_META)
        return lps_fail(LPS_EINVAL, "%s: metadata of %zu bytes exceeds the limit %u", op, meta_len,
                        LPS_MSET_MAX_META);
    uint64_t table_len = 0, bound = 0, decoded = 0;
    for (int k = 0; k < n; k++) {
        const char *name = in[k].name;
        size_t nl = name ? strlen(name) : 0;
        if (nl < 1 || nl > LPS_MSET_MAX_NAME)
            return lps_fail(LPS_EINVAL, "%s: tensor %d needs a name of 1..%d bytes", op, k + 1,
                            LPS_MSET_MAX_NAME);
        if (!in[k].tensor) return lps_fail(LPS_EINVAL, "%s: tensor '%s' is missing", op, name);
        int c = in[k].codec ? (int)in[k].codec : (int)ms->opts.codec;
        if (c < LPS_CODEC_PLAIN || c > LPS_CODEC_BF16)
            return lps_fail(LPS_EINVAL, "%s: tensor '%s': unknown codec %d", op, name, c);
        for (int j = 0; j < k; j++)
            if (strcmp(in[j].name, name) == 0)
                return lps_fail(LPS_EINVAL, "%s: duplicate tensor name '%s'", op, name);
        table_len += MS_TENSOR_FIXED + nl;
        bound += ms_encode_bound(c, in[k].tensor->numel);
        decoded += (uint64_t)in[k].tensor->numel * 4;
    }
    uint64_t cap = MS_REC_HDR + meta_len + table_len + bound;
    unsigned char *buf = malloc((size_t)cap);
    if (!buf) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %llu bytes", op, ULL(cap));
    if (!ms->cc && !(ms->cc = ZSTD_createCCtx())) {
        free(buf);
        return lps_fail(LPS_ENOMEM, "%s: cannot create a zstd context", op);
    }
    memset(buf, 0, MS_REC_HDR);
    if (meta_len) memcpy(buf + MS_REC_HDR, meta, meta_len);
    unsigned char *table = buf + MS_REC_HDR + meta_len;
    memset(table, 0, (size_t)table_len);
    uint64_t payload_at = MS_REC_HDR + meta_len + table_len, pos = 0, tpos = 0;
    uint32_t codecs = 0;
    lps_status s = LPS_OK;
    char who[300];
    for (int k = 0; k < n && !s; k++) {
        const lps_tensor *t = in[k].tensor;
        int c = in[k].codec ? (int)in[k].codec : (int)ms->opts.codec;
        size_t nl = strlen(in[k].name), len = 0;
        snprintf(who, sizeof who, "%s: tensor '%s'", op, in[k].name);
        s = ms_encode(ms->cc, c, ms->opts.level, t->data, t->numel, buf + payload_at + pos,
                      (size_t)(cap - payload_at - pos), &len, who);
        if (s) break;
        unsigned char *e = table + tpos;
        ms_put16(e, (uint16_t)nl);
        e[2] = MS_DTYPE_F32;
        e[3] = (unsigned char)c;
        e[4] = (unsigned char)t->ndim;
        for (int i = 0; i < t->ndim; i++) ms_put64(e + 8 + 8 * i, (uint64_t)t->shape[i]);
        ms_put64(e + 40, len);
        ms_put32(e + 48, ms_crc(buf + payload_at + pos, len));
        memcpy(e + MS_TENSOR_FIXED, in[k].name, nl);
        tpos += MS_TENSOR_FIXED + nl;
        pos += len;
        codecs |= 1u << (c - 1);
    }
    if (s) {
        free(buf);
        return s;
    }
    ms_rec_hdr h = {MS_REC_HDR + meta_len + table_len + pos, pos, decoded, (uint32_t)meta_len,
                    (uint32_t)table_len, (uint32_t)n, codecs, 0, 0, 0};
    h.meta_crc = ms_crc(buf + MS_REC_HDR, meta_len);
    h.table_crc = ms_crc(table, table_len);
    memcpy(buf, MS_REC_MAGIC, 4);
    ms_put64(buf + 8, h.length);
    ms_put32(buf + 16, h.meta_len);
    ms_put32(buf + 20, h.table_len);
    ms_put32(buf + 24, h.ntensors);
    ms_put32(buf + 28, h.codecs);
    ms_put64(buf + 32, h.payload_len);
    ms_put64(buf + 40, h.decoded);
    ms_put32(buf + 48, h.meta_crc);
    ms_put32(buf + 52, h.table_crc);
    h.crc = ms_crc(buf, 60);
    ms_put32(buf + 60, h.crc);
    s = put_record(ms, buf, &h, index);
    free(buf);
    return s;
}

lps_status lps_mset_copy(lps_mset *dst, lps_mset *src, int64_t i, int64_t *index)
{
    if (!dst->writable) return lps_fail(LPS_EINVAL, "modelset copy: %s is open read-only", dst->path);
    lps_status s = ms_check_index(src, i, "modelset copy");
    if (s) return s;
    char who[4200];
    snprintf(who, sizeof who, "%s: record %lld", src->path, (long long)i + 1);
    const ms_entry *e = &src->idx[i];
    unsigned char *raw;
    uint64_t len;
    s = ms_check_record(src, e->offset, e->length, 0, &raw, &len, who);
    if (s) return s;
    ms_rec_hdr h;
    s = ms_parse_rec_hdr(raw, len, &h, who);
    if (!s) s = put_record(dst, raw, &h, index);
    free(raw);
    return s;
}
