/* mset_parse.c - ModelSet headers and tensor tables: parse and check every
 * field against the file's real size and the format's limits
 * (docs/MODELSET_FORMAT.md) before anything is allocated from it. */
#include "store/mset_format.h"

#include <stdio.h>
#include <stdlib.h>

#define ULL(x) ((unsigned long long)(x))

/* --------------------------------------------------------- file header */

void ms_make_file_header(unsigned char *h, int codec, int level)
{
    memset(h, 0, MS_FILE_HDR);
    memcpy(h, MS_FILE_MAGIC, 8);
    ms_put32(h + 8, MS_VERSION);
    ms_put32(h + 16, (uint32_t)codec);
    ms_put32(h + 20, (uint32_t)level);
    ms_put32(h + 60, ms_crc(h, 60));
}

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

lps_status ms_check_file_header(const unsigned char *h, int *codec, int *level, int *future,
                                const char *who)
{
    *future = 0;
    if (memcmp(h, MS_FILE_MAGIC, 8) != 0)
        return lps_fail(LPS_EFORMAT, "%s: not a ModelSet file (bad magic)", who);
    uint32_t v = ms_get32(h + 8);
    if (v != MS_VERSION) {
        *future = v > MS_VERSION;
        return lps_fail(LPS_EFORMAT, "%s: format version %u, this reader knows version %d%s", who,
                        v, MS_VERSION, v > MS_VERSION ? " (written by a newer lualps)" : "");
    }
    if (ms_crc_bad(ms_get32(h + 60), ms_crc(h, 60)))
        return lps_fail(LPS_EFORMAT, "%s: file header checksum mismatch", who);
    uint32_t c = ms_get32(h + 16), l = ms_get32(h + 20);
    if (ms_get32(h + 12) != 0 || !all_zero(h + 24, 36))
        return lps_fail(LPS_EFORMAT, "%s: file header has reserved bits set", who);
    if (c < LPS_CODEC_PLAIN || c > LPS_CODEC_BF16 || l < 1 || l > 19)
        return lps_fail(LPS_EFORMAT, "%s: file header has codec %u level %u", who, c, l);
    *codec = (int)c;
    *level = (int)l;
    return LPS_OK;
}

/* ------------------------------------------------------- record headers */

lps_status ms_parse_rec_hdr(const unsigned char *p, uint64_t avail, ms_rec_hdr *h, const char *who)
{
    if (memcmp(p, MS_REC_MAGIC, 4) != 0)
        return lps_fail(LPS_EFORMAT, "%s: no record header here (bad magic)", who);
    h->crc = ms_get32(p + 60);
    if (ms_crc_bad(h->crc, ms_crc(p, 60)))
        return lps_fail(LPS_EFORMAT, "%s: record header checksum mismatch", who);
    if (ms_get32(p + 4) != 0 || ms_get32(p + 56) != 0)
        return lps_fail(LPS_EFORMAT, "%s: record header has reserved bits set", who);
    h->length = ms_get64(p + 8);
    h->meta_len = ms_get32(p + 16);
    h->table_len = ms_get32(p + 20);
    h->ntensors = ms_get32(p + 24);
    h->codecs = ms_get32(p + 28);
    h->payload_len = ms_get64(p + 32);
    h->decoded = ms_get64(p + 40);
    h->meta_crc = ms_get32(p + 48);
    h->table_crc = ms_get32(p + 52);
    if (h->meta_len > LPS_MSET_MAX_META)
        return lps_fail(LPS_EFORMAT, "%s: metadata of %u bytes exceeds the limit %u", who,
                        h->meta_len, LPS_MSET_MAX_META);
    if (h->ntensors > LPS_MSET_MAX_TENSORS)
        return lps_fail(LPS_EFORMAT, "%s: %u tensors exceed the limit %d", who, h->ntensors,
                        LPS_MSET_MAX_TENSORS);
    if (h->table_len < h->ntensors * (uint64_t)(MS_TENSOR_FIXED + 1) ||
        h->table_len > h->ntensors * (uint64_t)(MS_TENSOR_FIXED + LPS_MSET_MAX_NAME))
        return lps_fail(LPS_EFORMAT, "%s: tensor table of %u bytes cannot hold %u tensors", who,
                        h->table_len, h->ntensors);
    if (h->codecs & ~7u)
        return lps_fail(LPS_EFORMAT, "%s: unknown codec bits 0x%x", who, h->codecs);
    if (h->length > avail)
        return lps_fail(LPS_EFORMAT, "%s: record of %llu bytes runs past the end of the file "
                        "(%llu bytes left)", who, ULL(h->length), ULL(avail));
    /* payload_len <= length <= avail <= 2^63, so the sum cannot overflow */
    if (h->payload_len > h->length ||
        h->length != MS_REC_HDR + (uint64_t)h->meta_len + h->table_len + h->payload_len)
        return lps_fail(LPS_EFORMAT, "%s: record length %llu does not add up", who, ULL(h->length));
    /* decoded floats take at most twice their frame content (bf16) */
    if (h->decoded / 2 / MS_ZSTD_MAX_RATIO > h->payload_len)
        return lps_fail(LPS_EFORMAT, "%s: %llu decoded bytes cannot come from %llu stored", who,
                        ULL(h->decoded), ULL(h->payload_len));
    return LPS_OK;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

lps_status ms_parse_table(const unsigned char *t, const ms_rec_hdr *h, uint64_t payload_base,
                          lps_mset_record *rec, const char *who)
{
    rec->ntensors = 0;
    rec->tensors = calloc(h->ntensors ? h->ntensors : 1, sizeof *rec->tensors);
    if (!rec->tensors) return lps_fail(LPS_ENOMEM, "%s: out of memory", who);
    uint64_t pos = 0, stored = 0, decoded = 0;
    uint32_t codecs = 0;
    for (uint32_t k = 0; k < h->ntensors; k++) {
        if (h->table_len - pos < MS_TENSOR_FIXED)
            return lps_fail(LPS_EFORMAT, "%s: tensor table ends inside entry %u", who, k + 1);
        const unsigned char *e = t + pos;
        unsigned nl = ms_get16(e), dtype = e[2], codec = e[3], nd = e[4];
        if (nl < 1 || nl > LPS_MSET_MAX_NAME || h->table_len - pos - MS_TENSOR_FIXED < nl)
            return lps_fail(LPS_EFORMAT, "%s: tensor %u has a name of %u bytes", who, k + 1, nl);
        if (memchr(e + MS_TENSOR_FIXED, 0, nl))
            return lps_fail(LPS_EFORMAT, "%s: tensor %u name contains a NUL byte", who, k + 1);
        lps_mset_tensor *d = &rec->tensors[k];
        d->name = malloc(nl + 1);
        if (!d->name) return lps_fail(LPS_ENOMEM, "%s: out of memory", who);
        memcpy(d->name, e + MS_TENSOR_FIXED, nl);
        d->name[nl] = 0;
        rec->ntensors = (int)k + 1;
        if (dtype != MS_DTYPE_F32)
            return lps_fail(LPS_EFORMAT, "%s: tensor '%s' has unknown dtype %u", who, d->name, dtype);
        if (codec < LPS_CODEC_PLAIN || codec > LPS_CODEC_BF16)
            return lps_fail(LPS_EFORMAT, "%s: tensor '%s' has unknown codec %u", who, d->name, codec);
        if (nd < 1 || nd > LPS_MAX_DIMS)
            return lps_fail(LPS_EFORMAT, "%s: tensor '%s' has %u dimensions", who, d->name, nd);
        if (!all_zero(e + 5, 3) || ms_get32(e + 52) != 0 || ms_get64(e + 56) != 0)
            return lps_fail(LPS_EFORMAT, "%s: tensor '%s' has reserved bits set", who, d->name);
        d->ndim = (int)nd;
        for (int i = 0; i < LPS_MAX_DIMS; i++) {
            uint64_t s = ms_get64(e + 8 + 8 * i);
            if (i >= d->ndim ? s != 0 : s > (uint64_t)LPS_MAX_NUMEL)
                return lps_fail(LPS_EFORMAT, "%s: tensor '%s' has size %llu in dimension %d", who,
                                d->name, ULL(s), i + 1);
            d->shape[i] = i < d->ndim ? (int64_t)s : 1;
        }
        if (lps_shape_check("shape", d->ndim, d->shape, &d->numel) != LPS_OK) {
            char why[256]; /* lps_errmsg() is the buffer lps_fail writes */
            snprintf(why, sizeof why, "%s", lps_errmsg());
            return lps_fail(LPS_EFORMAT, "%s: tensor '%s': %s", who, d->name, why);
        }
        d->codec = (lps_codec)codec;
        d->stored_bytes = ms_get64(e + 40);
        d->crc = ms_get32(e + 48);
        if (d->stored_bytes > h->payload_len - stored)
            return lps_fail(LPS_EFORMAT, "%s: tensor '%s' claims %llu stored bytes, the record has "
                            "%llu left", who, d->name, ULL(d->stored_bytes),
                            ULL(h->payload_len - stored));
        if (ms_raw_bytes(d->codec, d->numel) / MS_ZSTD_MAX_RATIO > d->stored_bytes)
            return lps_fail(LPS_EFORMAT, "%s: tensor '%s': %lld values cannot come from %llu "
                            "stored bytes", who, d->name, (long long)d->numel, ULL(d->stored_bytes));
        d->offset = payload_base + stored;
        stored += d->stored_bytes;
        decoded += (uint64_t)d->numel * 4;
        codecs |= 1u << (codec - 1);
        pos += MS_TENSOR_FIXED + nl;
    }
    if (pos != h->table_len || stored != h->payload_len || decoded != h->decoded ||
        codecs != h->codecs)
        return lps_fail(LPS_EFORMAT, "%s: tensor table disagrees with the record header", who);
    if (h->ntensors > 1) {
        char **names = malloc(h->ntensors * sizeof *names);
        if (!names) return lps_fail(LPS_ENOMEM, "%s: out of memory", who);
        for (uint32_t k = 0; k < h->ntensors; k++) names[k] = rec->tensors[k].name;
        qsort(names, h->ntensors, sizeof *names, cmp_names);
        for (uint32_t k = 1; k < h->ntensors; k++)
            if (strcmp(names[k - 1], names[k]) == 0) {
                lps_fail(LPS_EFORMAT, "%s: duplicate tensor name '%s'", who, names[k]);
                free(names);
                return LPS_EFORMAT;
            }
        free(names);
    }
    return LPS_OK;
}

