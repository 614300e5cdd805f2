/* mset_format.h - ModelSet on-disk layout (docs/MODELSET_FORMAT.md) and the
 * helpers shared by modelset.c, mset_codec.c and mset_verify.c. Internal. */
#ifndef LPS_MSET_FORMAT_H
#define LPS_MSET_FORMAT_H

#include <stdint.h>
#include <string.h>
#include <zstd.h>

#include "core/internal.h"

#define MS_FILE_MAGIC "\x89LPSMS\r\n" /* 8 bytes, like PNG's: catches text-mode copies */
#define MS_VERSION 1
#define MS_FILE_HDR 64
#define MS_REC_MAGIC "LPSR"
#define MS_REC_HDR 64
#define MS_TENSOR_FIXED 64
#define MS_INDEX_MAGIC "LPSI"
#define MS_INDEX_HDR 16
#define MS_INDEX_ENTRY 48
#define MS_TRAILER_MAGIC "LPST"
#define MS_TRAILER 32
#define MS_DTYPE_F32 1
/* zstd cannot expand more than this: every block costs >= 4 bytes of frame
 * and decodes to <= 128 KiB. A claim beyond it is corrupt, refused before
 * any allocation. */
#define MS_ZSTD_MAX_RATIO 32768

/* Little-endian field access, independent of the host's byte order. */
static inline uint32_t ms_get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ms_get64(const unsigned char *p)
{
    return (uint64_t)ms_get32(p) | (uint64_t)ms_get32(p + 4) << 32;
}
static inline uint16_t ms_get16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline void ms_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}
static inline void ms_put64(unsigned char *p, uint64_t v)
{
    ms_put32(p, (uint32_t)v);
    ms_put32(p + 4, (uint32_t)(v >> 32));
}
static inline void ms_put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
}

/* CRC-32C (Castagnoli). Under LPS_FUZZING mismatches are ignored so the
 * fuzzer reaches the parsers behind the checksums. */
uint32_t ms_crc(const void *p, size_t n);
int ms_crc_bad(uint32_t stored, uint32_t computed);

/* One record as the in-memory index knows it (40 bytes). */
typedef struct {
    uint64_t offset, length, decoded;
    uint32_t header_crc, meta_len, ntensors, codecs;
} ms_entry;

/* An open set. Readers see `size` bytes (the file at open); a writer's
 * `end` is the end of its last record (the index, if on disk, follows). */
struct lps_mset {
    int fd;                     /* -1 for a memory image */
    const unsigned char *mem;
    char *path;
    uint64_t size, end, tail;
    int writable, indexed, index_on_disk;
    uint64_t damaged_at;        /* first damaged byte found by a scan (0: none) */
    int64_t count, cap;
    ms_entry *idx;
    lps_mset_opts opts;
    int file_codec, file_level;
    ZSTD_CCtx *cc;
    ZSTD_DCtx *dc;
};

/* Read n bytes at off (all inside `size`), or fail naming `who`. */
lps_status ms_read(const lps_mset *ms, uint64_t off, void *buf, size_t n, const char *who);
/* Check the 64-byte file header; *future set when only the version is wrong. */
lps_status ms_check_file_header(const unsigned char *h, int *codec, int *level, int *future,
                                const char *who);
void ms_make_file_header(unsigned char *h, int codec, int level);
/* Try the trailing index: fills ms->idx; fails (with a message) if absent or bad. */
lps_status ms_load_index(lps_mset *ms);
/* Find the next byte offset >= from where an intact record header starts. */
int ms_find_next(const lps_mset *ms, uint64_t from, uint64_t *pos);
/* Does an index block (possibly torn) start at off? */
int ms_is_index_at(const lps_mset *ms, uint64_t off);
/* Serialize the index of ms (records [0,count)) and a trailer for offset
 * ms->end into a new buffer of *n bytes. */
unsigned char *ms_build_index(const lps_mset *ms, size_t *n);
lps_status ms_write(int fd, uint64_t off, const void *buf, size_t n, const char *who);
int ms_push(lps_mset *ms, const ms_entry *e);
/* LPS_ERANGE unless 0 <= i < count (message names op and 1-based i). */
lps_status ms_check_index(const lps_mset *ms, int64_t i, const char *op);
/* Read record i whole and check every checksum; decode frames if `decode`. */
lps_status ms_check_record(lps_mset *ms, uint64_t off, uint64_t avail, int decode,
                           unsigned char **raw, uint64_t *len, const char *who);
void ms_free(lps_mset *ms);
lps_status ms_sync_dir(const char *path);

/* A parsed, checked record header. */
typedef struct {
    uint64_t length, payload_len, decoded;
    uint32_t meta_len, table_len, ntensors, codecs, meta_crc, table_crc, crc;
} ms_rec_hdr;

void ms_entry_from_hdr(ms_entry *e, uint64_t off, const ms_rec_hdr *h);

/* Parse and check a 64-byte record header; `avail` = bytes from its start to
 * the end of the data. On failure, sets the error prefixed with `who`. */
lps_status ms_parse_rec_hdr(const unsigned char *p, uint64_t avail, ms_rec_hdr *h, const char *who);

/* Parse the tensor table of a record into rec->tensors (names, shapes,
 * codecs, frame offsets relative to `payload_base`), checking every limit,
 * duplicate names and that the payload sizes add up. */
lps_status ms_parse_table(const unsigned char *table, const ms_rec_hdr *h, uint64_t payload_base,
                          lps_mset_record *rec, const char *who);

/* Codecs (mset_codec.c). Encode n floats into out (capacity cap). */
size_t ms_encode_bound(int codec, int64_t n);
lps_status ms_encode(ZSTD_CCtx *cc, int codec, int level, const float *x, int64_t n,
                     unsigned char *out, size_t cap, size_t *outlen, const char *who);
/* Decode one zstd frame of exactly `len` bytes into n floats, checking the
 * frame's declared size first. out may be NULL to check without keeping. */
lps_status ms_decode(ZSTD_DCtx *dc, int codec, const unsigned char *in, size_t len, float *out,
                     int64_t n, const char *who);
/* Bytes of the zstd frame content for n values of this codec. */
uint64_t ms_raw_bytes(int codec, int64_t n);

#endif
