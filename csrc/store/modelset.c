/* modelset.c - the ModelSet container: open, index, scan, read (writing:
 * mset_write.c; field checks: mset_parse.c; codecs: mset_codec.c).
 * Layout and rationale: docs/MODELSET_FORMAT.md. Rule kept throughout: no
 * length read from a file is used (allocated, read, added) before it is
 * checked against the bytes the file really has and the format's limits. */
#define _DEFAULT_SOURCE /* flock, fdatasync */
#include "store/mset_format.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ULL(x) ((unsigned long long)(x))

void lps_mset_opts_default(lps_mset_opts *o)
{
    o->codec = LPS_CODEC_SHUFFLE;
    o->level = 1; /* on float planes level 1 is both smaller and faster than 3 */
    o->sync = 1;
    o->overwrite = 0;
}

static lps_status check_opts(const lps_mset_opts *o, int allow_zero_codec)
{
    if (!(o->codec >= LPS_CODEC_PLAIN && o->codec <= LPS_CODEC_BF16) &&
        !(allow_zero_codec && o->codec == 0))
        return lps_fail(LPS_EINVAL, "modelset: unknown codec %d (1 plain, 2 shuffle, 3 bf16)",
                        (int)o->codec);
    if (o->level < 1 || o->level > 19)
        return lps_fail(LPS_EINVAL, "modelset: zstd level %d outside 1..19", o->level);
    return LPS_OK;
}

/* ------------------------------------------------------------- raw I/O */

lps_status ms_read(const lps_mset *ms, uint64_t off, void *buf, size_t n, const char *who)
{
    if (off > ms->size || n > ms->size - off)
        return lps_fail(LPS_EFORMAT, "%s: %zu bytes at offset %llu run past the end of the file "
                        "(%llu bytes)", who, n, ULL(off), ULL(ms->size));
    if (ms->mem) {
        if (n) memcpy(buf, ms->mem + off, n);
        return LPS_OK;
    }
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(ms->fd, (char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            return lps_fail(LPS_EIO, "%s: read at offset %llu failed: %s", who, ULL(off + done),
                            strerror(errno));
        if (r == 0)
            return lps_fail(LPS_EFORMAT, "%s: file ends at offset %llu (shrunk while open?)", who,
                            ULL(off + done));
        done += (size_t)r;
    }
    return LPS_OK;
}

/* Fault injection for the crash test: LUALPS_MSET_SLOW_WRITE="chunk,usec"
 * writes in chunks with a pause after each, so a kill -9 can land inside a
 * record (one pwrite of a whole record is otherwise never torn by a kill). */
static void slow_write_config(size_t *chunk, long *usec)
{
    static int read_env = 0;
    static size_t c = 0;
    static long u = 0;
    if (!read_env) {
        const char *e = getenv("LUALPS_MSET_SLOW_WRITE");
        unsigned long cc = 0;
        long uu = 0;
        if (e && sscanf(e, "%lu,%ld", &cc, &uu) == 2 && cc > 0 && uu >= 0) {
            c = cc;
            u = uu;
        }
        read_env = 1;
    }
    *chunk = c;
    *usec = u;
}

lps_status ms_write(int fd, uint64_t off, const void *buf, size_t n, const char *who)
{
    size_t done = 0, chunk;
    long usec;
    slow_write_config(&chunk, &usec);
    while (done < n) {
        size_t len = chunk && n - done > chunk ? chunk : n - done;
        if (chunk && done) {
            struct timespec ts = {usec / 1000000, (usec % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }
        ssize_t r = pwrite(fd, (const char *)buf + done, len, (off_t)(off + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return lps_fail(LPS_EIO, "%s: write at offset %llu failed: %s", who, ULL(off + done),
                            r < 0 ? strerror(errno) : "no progress");
        done += (size_t)r;
    }
    return LPS_OK;
}

lps_status ms_sync_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lps_fail(LPS_EIO, "modelset: cannot open directory %s: %s", dir, strerror(errno));
    int r = fsync(fd);
    close(fd);
    /* Some file systems refuse fsync on directories; that is not data loss. */
    if (r != 0 && errno != EINVAL && errno != EBADF)
        return lps_fail(LPS_EIO, "modelset: fsync of directory %s failed: %s", dir, strerror(errno));
    return LPS_OK;
}

/* ---------------------------------------------------------------- index */

int ms_push(lps_mset *ms, const ms_entry *e)
{
    if (ms->count == ms->cap) {
        int64_t cap = ms->cap ? ms->cap * 2 : 64;
        ms_entry *p = realloc(ms->idx, (size_t)cap * sizeof *p);
        if (!p) return 0;
        ms->idx = p;
        ms->cap = cap;
    }
    ms->idx[ms->count++] = *e;
    return 1;
}

void ms_entry_from_hdr(ms_entry *e, uint64_t off, const ms_rec_hdr *h)
{
    e->offset = off;
    e->length = h->length;
    e->decoded = h->decoded;
    e->header_crc = h->crc;
    e->meta_len = h->meta_len;
    e->ntensors = h->ntensors;
    e->codecs = h->codecs;
}

unsigned char *ms_build_index(const lps_mset *ms, size_t *n)
{
    size_t body = MS_INDEX_HDR + (size_t)ms->count * MS_INDEX_ENTRY;
    unsigned char *b = calloc(1, body + MS_TRAILER);
    if (!b) {
        lps_fail(LPS_ENOMEM, "modelset: cannot allocate the index");
        return NULL;
    }
    memcpy(b, MS_INDEX_MAGIC, 4);
    ms_put64(b + 8, (uint64_t)ms->count);
    for (int64_t i = 0; i < ms->count; i++) {
        unsigned char *p = b + MS_INDEX_HDR + i * MS_INDEX_ENTRY;
        const ms_entry *e = &ms->idx[i];
        ms_put64(p, e->offset);
        ms_put64(p + 8, e->length);
        ms_put64(p + 16, e->decoded);
        ms_put32(p + 24, e->header_crc);
        ms_put32(p + 28, e->meta_len);
        ms_put32(p + 32, e->ntensors);
        ms_put32(p + 36, e->codecs);
    }
    unsigned char *t = b + body;
    memcpy(t, MS_TRAILER_MAGIC, 4);
    ms_put32(t + 4, MS_VERSION);
    ms_put64(t + 8, ms->end);
    ms_put64(t + 16, (uint64_t)ms->count);
    ms_put32(t + 24, ms_crc(b, body));
    ms_put32(t + 28, ms_crc(t, 28));
    *n = body + MS_TRAILER;
    return b;
}

lps_status ms_load_index(lps_mset *ms)
{
    const char *who = "index";
    unsigned char t[MS_TRAILER];
    if (ms->size < MS_FILE_HDR + MS_INDEX_HDR + MS_TRAILER)
        return lps_fail(LPS_EFORMAT, "%s: file too short to hold one", who);
    lps_status s = ms_read(ms, ms->size - MS_TRAILER, t, MS_TRAILER, who);
    if (s) return s;
    if (memcmp(t, MS_TRAILER_MAGIC, 4) != 0)
        return lps_fail(LPS_EFORMAT, "%s: no trailer at the end of the file", who);
    if (ms_crc_bad(ms_get32(t + 28), ms_crc(t, 28)))
        return lps_fail(LPS_EFORMAT, "%s: trailer checksum mismatch", who);
    if (ms_get32(t + 4) != MS_VERSION)
        return lps_fail(LPS_EFORMAT, "%s: trailer version %u", who, ms_get32(t + 4));
    uint64_t off = ms_get64(t + 8), count = ms_get64(t + 16);
    uint64_t room = ms->size - MS_FILE_HDR - MS_INDEX_HDR - MS_TRAILER;
    if (count > room / (MS_INDEX_ENTRY + MS_REC_HDR) ||
        off != ms->size - MS_TRAILER - MS_INDEX_HDR - count * MS_INDEX_ENTRY || off < MS_FILE_HDR)
        return lps_fail(LPS_EFORMAT, "%s: trailer claims %llu records at offset %llu, which the "
                        "file size %llu cannot hold", who, ULL(count), ULL(off), ULL(ms->size));
    size_t n = MS_INDEX_HDR + (size_t)count * MS_INDEX_ENTRY;
    unsigned char *b = malloc(n);
    if (!b) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %zu bytes", who, n);
    s = ms_read(ms, off, b, n, who);
    if (!s && ms_crc_bad(ms_get32(t + 24), ms_crc(b, n)))
        s = lps_fail(LPS_EFORMAT, "%s: checksum mismatch", who);
    if (!s && (memcmp(b, MS_INDEX_MAGIC, 4) != 0 || ms_get32(b + 4) != 0 ||
               ms_get64(b + 8) != count))
        s = lps_fail(LPS_EFORMAT, "%s: bad index block header", who);
    uint64_t pos = MS_FILE_HDR;
    ms->count = 0;
    for (uint64_t i = 0; !s && i < count; i++) {
        const unsigned char *p = b + MS_INDEX_HDR + i * MS_INDEX_ENTRY;
        ms_entry e = {ms_get64(p), ms_get64(p + 8), ms_get64(p + 16), ms_get32(p + 24),
                      ms_get32(p + 28), ms_get32(p + 32), ms_get32(p + 36)};
        /* records are contiguous from the header to the index */
        if (e.offset != pos || e.length < MS_REC_HDR || e.length > off - pos ||
            e.meta_len > LPS_MSET_MAX_META || e.ntensors > LPS_MSET_MAX_TENSORS ||
            e.codecs & ~7u || ms_get32(p + 40) || ms_get32(p + 44))
            s = lps_fail(LPS_EFORMAT, "%s: entry for record %llu is inconsistent", who, ULL(i + 1));
        else if (!ms_push(ms, &e))
            s = lps_fail(LPS_ENOMEM, "%s: out of memory", who);
        pos += e.length;
    }
    if (!s && pos != off)
        s = lps_fail(LPS_EFORMAT, "%s: records end at %llu, the index starts at %llu", who,
                     ULL(pos), ULL(off));
    free(b);
    if (s) {
        ms->count = 0;
        return s;
    }
    ms->end = off;
    ms->tail = 0;
    return LPS_OK;
}

int ms_is_index_at(const lps_mset *ms, uint64_t off)
{
    unsigned char m[4];
    return off + 4 <= ms->size && ms_read(ms, off, m, 4, "index") == LPS_OK &&
           memcmp(m, MS_INDEX_MAGIC, 4) == 0;
}

int ms_find_next(const lps_mset *ms, uint64_t from, uint64_t *pos)
{
    enum { CHUNK = 1 << 16 };
    unsigned char buf[CHUNK + 3], hdr[MS_REC_HDR];
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", lps_errmsg()); /* keep the caller's message */
    int found = 0;
    for (uint64_t off = from; !found && off + MS_REC_HDR <= ms->size; off += CHUNK) {
        size_t n = ms->size - off < sizeof buf ? (size_t)(ms->size - off) : sizeof buf;
        if (ms_read(ms, off, buf, n, "scan")) break;
        for (size_t i = 0; i + 4 <= n && i < CHUNK; i++) {
            if (buf[i] != 'L' || memcmp(buf + i, MS_REC_MAGIC, 4) != 0) continue;
            ms_rec_hdr h;
            if (off + i + MS_REC_HDR > ms->size ||
                ms_read(ms, off + i, hdr, MS_REC_HDR, "scan") ||
                ms_parse_rec_hdr(hdr, ms->size - off - i, &h, "scan"))
                continue;
            *pos = off + i;
            found = 1;
            break;
        }
    }
    lps_fail(LPS_OK, "%s", saved);
    return found;
}

/* Walk record headers from the file header on, skipping damage by
 * searching for the next intact header. Stops at an index block or at a
 * tail that holds no further record. */
static lps_status scan(lps_mset *ms)
{
    uint64_t off = MS_FILE_HDR;
    unsigned char hdr[MS_REC_HDR];
    ms->count = 0;
    ms->damaged_at = 0;
    while (off < ms->size) {
        ms_rec_hdr h;
        if (off + MS_REC_HDR <= ms->size && !ms_read(ms, off, hdr, MS_REC_HDR, "scan") &&
            !ms_parse_rec_hdr(hdr, ms->size - off, &h, "scan")) {
            ms_entry e;
            ms_entry_from_hdr(&e, off, &h);
            if (!ms_push(ms, &e)) return lps_fail(LPS_ENOMEM, "modelset: out of memory");
            off += h.length;
            continue;
        }
        uint64_t next;
        if (!ms_find_next(ms, off + 1, &next)) break;
        if (!ms->damaged_at) ms->damaged_at = off;
        off = next;
    }
    ms->end = off;
    ms->tail = ms->size - off;
    return LPS_OK;
}

/* Index first; a scan when it is missing or bad. A reader racing a writer
 * that drops the index retries, then scans what is complete. */
static lps_status load(lps_mset *ms)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        if (ms_load_index(ms) == LPS_OK) {
            ms->indexed = 1;
            return LPS_OK;
        }
        if (ms->mem) break;
        struct stat st;
        if (fstat(ms->fd, &st) != 0)
            return lps_fail(LPS_EIO, "%s: stat failed: %s", ms->path, strerror(errno));
        if ((uint64_t)st.st_size == ms->size) break;
        ms->size = (uint64_t)st.st_size;
    }
    ms->indexed = 0;
    return scan(ms);
}

/* ------------------------------------------------------------ open/close */

void ms_free(lps_mset *ms)
{
    if (!ms) return;
    if (ms->fd >= 0) close(ms->fd);
    ZSTD_freeCCtx(ms->cc);
    ZSTD_freeDCtx(ms->dc);
    free(ms->idx);
    free(ms->path);
    free(ms);
}

static lps_mset *alloc_set(const char *path)
{
    lps_mset *ms = calloc(1, sizeof *ms);
    if (ms) ms->path = strdup(path ? path : "<memory>");
    if (!ms || !ms->path) {
        free(ms);
        lps_fail(LPS_ENOMEM, "modelset: out of memory");
        return NULL;
    }
    ms->fd = -1;
    lps_mset_opts_default(&ms->opts);
    return ms;
}

static lps_status lock_writer(int fd, const char *path)
{
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return LPS_OK;
    if (errno == EWOULDBLOCK)
        return lps_fail(LPS_EIO, "%s: another writer holds the lock (one writer at a time)", path);
    return lps_fail(LPS_EIO, "%s: cannot lock: %s", path, strerror(errno));
}

static lps_status read_header(lps_mset *ms)
{
    unsigned char h[MS_FILE_HDR];
    int future;
    if (ms->size < MS_FILE_HDR)
        return lps_fail(LPS_EFORMAT, "%s: %llu bytes, too short for a ModelSet file", ms->path,
                        ULL(ms->size));
    lps_status s = ms_read(ms, 0, h, MS_FILE_HDR, ms->path);
    if (!s) s = ms_check_file_header(h, &ms->file_codec, &ms->file_level, &future, ms->path);
    return s;
}

lps_status lps_mset_create(lps_mset **out, const char *path, const lps_mset_opts *opts)
{
    *out = NULL;
    lps_mset *ms = alloc_set(path);
    if (!ms) return LPS_ENOMEM;
    if (opts) ms->opts = *opts;
    lps_status s = check_opts(&ms->opts, 0);
    if (s) goto fail;
    ms->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (ms->opts.overwrite ? 0 : O_EXCL), 0644);
    if (ms->fd < 0) {
        s = lps_fail(LPS_EIO, "%s: cannot create: %s%s", path, strerror(errno),
                     errno == EEXIST ? " (open it with mode \"a\" to append, or pass overwrite)" : "");
        goto fail;
    }
    /* lock before truncating, so an overwrite never clobbers a live writer */
    if ((s = lock_writer(ms->fd, path))) goto fail;
    if (ftruncate(ms->fd, 0) != 0) {
        s = lps_fail(LPS_EIO, "%s: cannot truncate: %s", path, strerror(errno));
        goto fail;
    }
    unsigned char h[MS_FILE_HDR];
    ms_make_file_header(h, ms->opts.codec, ms->opts.level);
    if ((s = ms_write(ms->fd, 0, h, sizeof h, path))) goto fail;
    if (fsync(ms->fd) != 0) {
        s = lps_fail(LPS_EIO, "%s: fsync failed: %s", path, strerror(errno));
        goto fail;
    }
    if ((s = ms_sync_dir(path))) goto fail;
    ms->writable = 1;
    ms->size = ms->end = MS_FILE_HDR;
    ms->file_codec = ms->opts.codec;
    ms->file_level = ms->opts.level;
    *out = ms;
    return LPS_OK;
fail:
    ms_free(ms);
    return s;
}

lps_status lps_mset_open(lps_mset **out, const char *path, int append, const lps_mset_opts *opts)
{
    *out = NULL;
    lps_mset *ms = alloc_set(path);
    if (!ms) return LPS_ENOMEM;
    lps_status s = LPS_OK;
    ms->fd = open(path, (append ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (ms->fd < 0) {
        s = lps_fail(LPS_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (append && (s = lock_writer(ms->fd, path))) goto fail;
    struct stat st;
    if (fstat(ms->fd, &st) != 0) {
        s = lps_fail(LPS_EIO, "%s: stat failed: %s", path, strerror(errno));
        goto fail;
    }
    ms->size = (uint64_t)st.st_size;
    if ((s = read_header(ms)) || (s = load(ms))) goto fail;
    if (append) {
        if (ms->damaged_at) {
            s = lps_fail(LPS_EFORMAT, "%s: damaged data at byte %llu before the last record; run "
                         "repair before appending", path, ULL(ms->damaged_at));
            goto fail;
        }
        if (opts) {
            ms->opts = *opts;
            if ((s = check_opts(&ms->opts, 1))) goto fail;
        } else {
            ms->opts.codec = 0;
            ms->opts.level = ms->file_level;
        }
        if (!ms->opts.codec) ms->opts.codec = (lps_codec)ms->file_codec;
        ms->index_on_disk = ms->indexed;
        if (!ms->indexed && ms->tail) {
            /* the torn record of a killed writer, or a torn index: no intact
             * record follows (scan searched), so nothing is lost */
            if (ftruncate(ms->fd, (off_t)ms->end) != 0 || fdatasync(ms->fd) != 0) {
                s = lps_fail(LPS_EIO, "%s: cannot truncate the torn tail: %s", path,
                             strerror(errno));
                goto fail;
            }
            ms->size = ms->end;
            ms->tail = 0;
        }
        ms->writable = 1;
    }
    *out = ms;
    return LPS_OK;
fail:
    ms_free(ms);
    return s;
}

lps_status lps_mset_open_mem(lps_mset **out, const void *buf, size_t n)
{
    *out = NULL;
    lps_mset *ms = alloc_set(NULL);
    if (!ms) return LPS_ENOMEM;
    ms->mem = buf;
    ms->size = n;
    lps_status s = read_header(ms);
    if (!s) s = load(ms);
    if (s) {
        ms_free(ms);
        return s;
    }
    *out = ms;
    return LPS_OK;
}

lps_status lps_mset_flush(lps_mset *ms)
{
    if (!ms->writable) return lps_fail(LPS_EINVAL, "%s: flush: opened read-only", ms->path);
    if (ms->index_on_disk) return LPS_OK;
    size_t n;
    unsigned char *b = ms_build_index(ms, &n);
    if (!b) return LPS_ENOMEM;
    /* nothing but the index may follow the last record */
    lps_status s = ftruncate(ms->fd, (off_t)ms->end) == 0
                       ? ms_write(ms->fd, ms->end, b, n, ms->path)
                       : lps_fail(LPS_EIO, "%s: truncate failed: %s", ms->path, strerror(errno));
    free(b);
    if (!s && fdatasync(ms->fd) != 0)
        s = lps_fail(LPS_EIO, "%s: fdatasync failed: %s", ms->path, strerror(errno));
    if (!s) ms->index_on_disk = 1;
    return s;
}

lps_status lps_mset_close(lps_mset *ms)
{
    if (!ms) return LPS_OK;
    lps_status s = ms->writable ? lps_mset_flush(ms) : LPS_OK;
    ms_free(ms);
    return s;
}

int64_t lps_mset_count(const lps_mset *ms) { return ms->count; }
const char *lps_mset_path(const lps_mset *ms) { return ms->path; }
int lps_mset_writable(const lps_mset *ms) { return ms->writable; }
lps_codec lps_mset_default_codec(const lps_mset *ms)
{
    return ms->writable ? ms->opts.codec : (lps_codec)ms->file_codec;
}
int lps_mset_indexed(const lps_mset *ms) { return ms->indexed; }
uint64_t lps_mset_tail_bytes(const lps_mset *ms) { return ms->tail; }

lps_status ms_check_index(const lps_mset *ms, int64_t i, const char *op)
{
    if (i < 0 || i >= ms->count)
        return lps_fail(LPS_ERANGE, "%s: record %lld out of range 1..%lld", op, (long long)i + 1,
                        (long long)ms->count);
    return LPS_OK;
}

lps_status lps_mset_record_info(const lps_mset *ms, int64_t i, lps_mset_info *info)
{
    lps_status s = ms_check_index(ms, i, "modelset");
    if (s) return s;
    const ms_entry *e = &ms->idx[i];
    info->offset = e->offset;
    info->length = e->length;
    info->decoded_bytes = e->decoded;
    info->meta_len = e->meta_len;
    info->ntensors = e->ntensors;
    info->codecs = e->codecs;
    return LPS_OK;
}

/* ---------------------------------------------------------------- reading */

void lps_mset_record_clear(lps_mset_record *rec)
{
    if (!rec) return;
    for (int k = 0; k < rec->ntensors; k++) {
        free(rec->tensors[k].name);
        lps_tensor_free(rec->tensors[k].tensor);
    }
    free(rec->tensors);
    free(rec->meta);
    memset(rec, 0, sizeof *rec);
}

static lps_status need_dctx(lps_mset *ms)
{
    if (!ms->dc && !(ms->dc = ZSTD_createDCtx()))
        return lps_fail(LPS_ENOMEM, "modelset: cannot create a zstd context");
    return LPS_OK;
}

/* Parse what buf holds of a record (header, then meta, table, payloads as
 * far as `have` reaches) into rec, checking each part's checksum. */
static lps_status parse_record(lps_mset *ms, const unsigned char *buf, uint64_t have,
                               uint64_t avail, int what, lps_mset_record *rec, ms_rec_hdr *h,
                               const char *who)
{
    lps_status s = ms_parse_rec_hdr(buf, avail, h, who);
    if (s) return s;
    const unsigned char *meta = buf + MS_REC_HDR;
    if (have < MS_REC_HDR + (uint64_t)h->meta_len) return lps_fail(LPS_EFORMAT, "%s: short read", who);
    if (ms_crc_bad(h->meta_crc, ms_crc(meta, h->meta_len)))
        return lps_fail(LPS_EFORMAT, "%s: metadata checksum mismatch", who);
    if (what & LPS_MSET_META) {
        rec->meta = malloc((size_t)h->meta_len + 1);
        if (!rec->meta) return lps_fail(LPS_ENOMEM, "%s: out of memory", who);
        memcpy(rec->meta, meta, h->meta_len);
        rec->meta[h->meta_len] = 0;
        rec->meta_len = h->meta_len;
    }
    if (!(what & (LPS_MSET_TABLE | LPS_MSET_DATA))) return LPS_OK;
    uint64_t table_at = MS_REC_HDR + (uint64_t)h->meta_len;
    if (have < table_at + h->table_len) return lps_fail(LPS_EFORMAT, "%s: short read", who);
    const unsigned char *table = buf + table_at;
    if (ms_crc_bad(h->table_crc, ms_crc(table, h->table_len)))
        return lps_fail(LPS_EFORMAT, "%s: tensor table checksum mismatch", who);
    uint64_t payload_at = table_at + h->table_len;
    if ((s = ms_parse_table(table, h, payload_at, rec, who))) return s;
    if (!(what & LPS_MSET_DATA)) return LPS_OK;
    if (have < h->length) return lps_fail(LPS_EFORMAT, "%s: short read", who);
    if ((s = need_dctx(ms))) return s;
    char twho[512];
    for (int k = 0; k < rec->ntensors; k++) {
        lps_mset_tensor *d = &rec->tensors[k];
        const unsigned char *frame = buf + d->offset; /* relative until fixed below */
        snprintf(twho, sizeof twho, "%s: tensor '%s'", who, d->name);
        if (ms_crc_bad(d->crc, ms_crc(frame, d->stored_bytes)))
            return lps_fail(LPS_EFORMAT, "%s: payload checksum mismatch", twho);
        d->tensor = lps_tensor_new(d->ndim, d->shape);
        if (!d->tensor) {
            char why[256];
            snprintf(why, sizeof why, "%s", lps_errmsg());
            return lps_fail(LPS_ENOMEM, "%s: %s", twho, why);
        }
        if ((s = ms_decode(ms->dc, d->codec, frame, d->stored_bytes, d->tensor->data, d->numel,
                           twho)))
            return s;
    }
    return LPS_OK;
}

lps_status lps_mset_read(lps_mset *ms, int64_t i, int what, lps_mset_record *rec)
{
    memset(rec, 0, sizeof *rec);
    lps_status s = ms_check_index(ms, i, "modelset");
    if (s) return s;
    const ms_entry *e = &ms->idx[i];
    char who[4200];
    snprintf(who, sizeof who, "%s: record %lld", ms->path, (long long)i + 1);
    /* Only the parts asked for are read: META needs header and JSON; the
     * table length is known once the header is read. */
    uint64_t want = MS_REC_HDR + (uint64_t)e->meta_len;
    if (what & LPS_MSET_DATA) want = e->length;
    if (want > e->length) want = e->length;
    unsigned char *buf = malloc((size_t)want);
    if (!buf) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %llu bytes", who, ULL(want));
    s = ms_read(ms, e->offset, buf, (size_t)want, who);
    if (!s && ms_crc_bad(ms_get32(buf + 60), e->header_crc))
        s = lps_fail(LPS_EFORMAT, "%s: record header does not match the index (checksum)", who);
    if (!s && (what & LPS_MSET_TABLE) && !(what & LPS_MSET_DATA)) {
        uint32_t tl = ms_get32(buf + 20);
        uint64_t need = MS_REC_HDR + (uint64_t)e->meta_len + tl;
        if (need <= e->length && need > want) {
            unsigned char *nb = realloc(buf, (size_t)need);
            if (!nb) s = lps_fail(LPS_ENOMEM, "%s: out of memory", who);
            else {
                buf = nb;
                s = ms_read(ms, e->offset + want, buf + want, (size_t)(need - want), who);
                want = need;
            }
        }
    }
    ms_rec_hdr h;
    if (!s) s = parse_record(ms, buf, want, e->length, what, rec, &h, who);
    if (!s && (h.length != e->length || h.meta_len != e->meta_len || h.ntensors != e->ntensors ||
               h.codecs != e->codecs || h.decoded != e->decoded))
        s = lps_fail(LPS_EFORMAT, "%s: record header does not match the index", who);
    free(buf);
    if (s) {
        lps_mset_record_clear(rec);
        return s;
    }
    for (int k = 0; k < rec->ntensors; k++) rec->tensors[k].offset += e->offset;
    rec->index = i;
    rec->offset = e->offset;
    rec->length = e->length;
    if (!(what & LPS_MSET_META)) {
        free(rec->meta);
        rec->meta = NULL;
    }
    rec->ntensors = (what & (LPS_MSET_TABLE | LPS_MSET_DATA)) ? rec->ntensors : 0;
    return LPS_OK;
}

lps_status ms_check_record(lps_mset *ms, uint64_t off, uint64_t avail, int decode,
                           unsigned char **raw, uint64_t *len, const char *who)
{
    unsigned char hdr[MS_REC_HDR];
    ms_rec_hdr h;
    lps_status s = ms_read(ms, off, hdr, MS_REC_HDR, who);
    if (!s) s = ms_parse_rec_hdr(hdr, avail, &h, who);
    if (s) return s;
    unsigned char *buf = malloc((size_t)h.length);
    if (!buf) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %llu bytes", who, ULL(h.length));
    lps_mset_record rec;
    memset(&rec, 0, sizeof rec);
    s = ms_read(ms, off, buf, (size_t)h.length, who);
    if (!s) {
        /* DATA without keeping tensors when not decoding: check CRCs only */
        s = parse_record(ms, buf, h.length, h.length, LPS_MSET_TABLE, &rec, &h, who);
        char twho[512];
        for (int k = 0; !s && k < rec.ntensors; k++) {
            const lps_mset_tensor *d = &rec.tensors[k];
            snprintf(twho, sizeof twho, "%s: tensor '%s'", who, d->name);
            if (ms_crc_bad(d->crc, ms_crc(buf + d->offset, d->stored_bytes)))
                s = lps_fail(LPS_EFORMAT, "%s: payload checksum mismatch", twho);
            else if (decode && !(s = need_dctx(ms)))
                s = ms_decode(ms->dc, d->codec, buf + d->offset, d->stored_bytes, NULL, d->numel,
                              twho);
        }
    }
    lps_mset_record_clear(&rec);
    if (s || !raw) {
        free(buf);
        return s;
    }
    *raw = buf;
    *len = h.length;
    return LPS_OK;
}

