/* mset_verify.c - ModelSet verify (check every byte, name each problem's
 * record) and repair (keep every intact record, never delete the original
 * when records inside it are damaged). */
#define _DEFAULT_SOURCE /* flock, fdatasync */
#include "store/mset_format.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define ULL(x) ((unsigned long long)(x))
#define MAX_KEPT 1000

typedef struct {
    ms_entry e;
    int ok;
} span;

typedef struct {
    span *v;
    int64_t n, cap;
    int header_ok, fatal; /* fatal: bad magic or future version: nothing else read */
} scan_result;

static void problem(lps_mset_report *rep, int64_t record, uint64_t off, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static void problem(lps_mset_report *rep, int64_t record, uint64_t off, const char *fmt, ...)
{
    int k = rep->nproblems++;
    if (k >= MAX_KEPT) return;
    if (k % 16 == 0) {
        lps_mset_problem *p = realloc(rep->problems, (size_t)(k + 16) * sizeof *p);
        if (!p) {
            rep->nproblems--;
            return;
        }
        rep->problems = p;
    }
    lps_mset_problem *p = &rep->problems[k];
    p->record = record;
    p->offset = off;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, sizeof p->msg, fmt, ap);
    va_end(ap);
}

void lps_mset_report_free(lps_mset_report *rep)
{
    if (!rep) return;
    free(rep->problems);
    memset(rep, 0, sizeof *rep);
}

static int push_span(scan_result *r, const span *s)
{
    if (r->n == r->cap) {
        int64_t cap = r->cap ? r->cap * 2 : 64;
        span *v = realloc(r->v, (size_t)cap * sizeof *v);
        if (!v) return 0;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = *s;
    return 1;
}

/* Everything verify checks, also used by repair to pick the intact records. */
static lps_status check_all(lps_mset *ms, lps_mset_report *rep, scan_result *r)
{
    memset(r, 0, sizeof *r);
    if (ms->size < MS_FILE_HDR) {
        problem(rep, -1, 0, "file: %llu bytes, shorter than the %d-byte header", ULL(ms->size),
                MS_FILE_HDR);
        r->fatal = 1;
        return LPS_OK;
    }
    unsigned char h[MS_FILE_HDR];
    int future, codec, level;
    lps_status s = ms_read(ms, 0, h, MS_FILE_HDR, "file header");
    if (s) return s;
    if (ms_check_file_header(h, &codec, &level, &future, "file header") == LPS_OK) {
        r->header_ok = 1;
        ms->file_codec = codec;
        ms->file_level = level;
    } else {
        problem(rep, -1, 0, "%s", lps_errmsg());
        if (future || memcmp(h, MS_FILE_MAGIC, 8) != 0) {
            r->fatal = 1;
            return LPS_OK;
        }
    }
    if (ms_load_index(ms) == LPS_OK)
        rep->indexed = 1;
    else {
        const char *why = lps_errmsg();
        if (strstr(why, "no trailer") || strstr(why, "too short"))
            problem(rep, -1, ms->size, "index: no trailer at the end of the file (the writer did "
                    "not close it, or the trailer is damaged); repair writes the index");
        else
            problem(rep, -1, ms->size, "%s; repair rebuilds it from the records", why);
    }
    char who[160];
    if (rep->indexed) {
        /* The index names every record, even one whose header is damaged. */
        for (int64_t i = 0; i < ms->count; i++) {
            span sp = {ms->idx[i], 1};
            snprintf(who, sizeof who, "record %lld (byte %llu)", (long long)i + 1,
                     ULL(sp.e.offset));
            unsigned char hdr[MS_REC_HDR];
            s = ms_read(ms, sp.e.offset, hdr, MS_REC_HDR, who);
            if (!s && ms_get32(hdr + 60) != sp.e.header_crc)
                s = lps_fail(LPS_EFORMAT, "%s: record header does not match the index", who);
            if (!s) s = ms_check_record(ms, sp.e.offset, sp.e.length, 1, NULL, NULL, who);
            if (s == LPS_ENOMEM) return s;
            if (s) {
                sp.ok = 0;
                problem(rep, i, sp.e.offset, "%s", lps_errmsg());
            }
            if (!push_span(r, &sp)) return lps_fail(LPS_ENOMEM, "verify: out of memory");
        }
    }
    uint64_t off = rep->indexed ? ms->size : MS_FILE_HDR;
    unsigned char hdr[MS_REC_HDR];
    while (off < ms->size) {
        ms_rec_hdr rh;
        int64_t recno = r->n;
        snprintf(who, sizeof who, "record %lld (byte %llu)", (long long)recno + 1, ULL(off));
        if (off + MS_REC_HDR <= ms->size && !ms_read(ms, off, hdr, MS_REC_HDR, who) &&
            !ms_parse_rec_hdr(hdr, ms->size - off, &rh, who)) {
            span sp = {{0}, 1};
            sp.e = (ms_entry){off, rh.length, rh.decoded, rh.crc, rh.meta_len, rh.ntensors, rh.codecs};
            s = ms_check_record(ms, off, ms->size - off, 1, NULL, NULL, who);
            if (s == LPS_ENOMEM) return s;
            if (s) {
                sp.ok = 0;
                problem(rep, recno, off, "%s", lps_errmsg());
            }
            if (!push_span(r, &sp)) return lps_fail(LPS_ENOMEM, "verify: out of memory");
            off += rh.length;
            continue;
        }
        uint64_t next;
        if (!ms_find_next(ms, off + 1, &next)) {
            rep->tail_bytes = ms->size - off;
            char after[64];
            if (r->n) snprintf(after, sizeof after, "record %lld", (long long)r->n);
            else snprintf(after, sizeof after, "the file header");
            problem(rep, -1, off, "tail: %llu bytes after %s are not a complete record (a torn "
                    "write); repair truncates them", ULL(ms->size - off), after);
            break;
        }
        problem(rep, recno, off, "record %lld (byte %llu): damaged header or data up to byte "
                "%llu, where the next intact record starts; repair drops these bytes",
                (long long)recno + 1, ULL(off), ULL(next));
        off = next;
    }
    for (int64_t i = 0; i < r->n; i++) rep->records += r->v[i].ok;
    return LPS_OK;
}

static lps_mset *reader(int fd, const void *mem, uint64_t size, const char *path)
{
    lps_mset *ms = calloc(1, sizeof *ms);
    if (!ms || !(ms->path = strdup(path))) {
        free(ms);
        lps_fail(LPS_ENOMEM, "verify: out of memory");
        return NULL;
    }
    ms->fd = fd;
    ms->mem = mem;
    ms->size = size;
    return ms;
}

static lps_status verify_with(lps_mset *ms, lps_mset_report *rep)
{
    scan_result r;
    lps_status s = check_all(ms, rep, &r);
    free(r.v);
    return s;
}

/* A reader over the whole of an open file; on failure fd is closed, NULL is
 * returned and *s says why (the message is set). */
static lps_mset *fd_reader(int fd, const char *path, lps_status *s)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        *s = lps_fail(LPS_EIO, "%s: stat failed: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    lps_mset *ms = reader(fd, NULL, (uint64_t)st.st_size, path);
    if (!ms) {
        *s = LPS_ENOMEM;
        close(fd);
    }
    return ms;
}

lps_status lps_mset_verify(const char *path, lps_mset_report *rep)
{
    memset(rep, 0, sizeof *rep);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lps_fail(LPS_EIO, "%s: cannot open: %s", path, strerror(errno));
    lps_status fs;
    lps_mset *ms = fd_reader(fd, path, &fs);
    if (!ms) return fs;
    lps_status s = verify_with(ms, rep);
    ms_free(ms);
    return s;
}

lps_status lps_mset_verify_mem(const void *buf, size_t n, lps_mset_report *rep)
{
    memset(rep, 0, sizeof *rep);
    lps_mset *ms = reader(-1, buf, n, "<memory>");
    if (!ms) return LPS_ENOMEM;
    lps_status s = verify_with(ms, rep);
    ms_free(ms);
    return s;
}

/* Write the intact records of src (raw, already checked) to a new file. */
static lps_status rewrite(lps_mset *src, const scan_result *r, const char *tmp)
{
    lps_mset *dst = reader(-1, NULL, 0, tmp);
    if (!dst) return LPS_ENOMEM;
    lps_status s = LPS_OK;
    dst->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (dst->fd < 0) {
        s = lps_fail(LPS_EIO, "repair: cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    unsigned char h[MS_FILE_HDR];
    ms_make_file_header(h, src->file_codec ? src->file_codec : LPS_CODEC_SHUFFLE,
                        src->file_level ? src->file_level : 1);
    s = ms_write(dst->fd, 0, h, sizeof h, tmp);
    dst->end = MS_FILE_HDR;
    for (int64_t i = 0; !s && i < r->n; i++) {
        if (!r->v[i].ok) continue;
        ms_entry e = r->v[i].e;
        unsigned char *buf = malloc((size_t)e.length);
        if (!buf) {
            s = lps_fail(LPS_ENOMEM, "repair: out of memory");
            break;
        }
        s = ms_read(src, e.offset, buf, (size_t)e.length, src->path);
        if (!s) s = ms_write(dst->fd, dst->end, buf, (size_t)e.length, tmp);
        free(buf);
        e.offset = dst->end;
        if (!s && !ms_push(dst, &e)) s = lps_fail(LPS_ENOMEM, "repair: out of memory");
        dst->end += e.length;
    }
    size_t n;
    unsigned char *ix = s ? NULL : ms_build_index(dst, &n);
    if (!s && !ix) s = LPS_ENOMEM;
    if (!s) s = ms_write(dst->fd, dst->end, ix, n, tmp);
    free(ix);
    if (!s && fsync(dst->fd) != 0) s = lps_fail(LPS_EIO, "repair: fsync %s: %s", tmp, strerror(errno));
out:
    if (s && dst->fd >= 0) unlink(tmp);
    ms_free(dst);
    return s;
}

lps_status lps_mset_repair(const char *path, lps_mset_report *rep)
{
    memset(rep, 0, sizeof *rep);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return lps_fail(LPS_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        return lps_fail(LPS_EIO, "%s: cannot repair: %s", path,
                        e == EWOULDBLOCK ? "a writer holds the lock" : strerror(e));
    }
    lps_status fs;
    lps_mset *ms = fd_reader(fd, path, &fs);
    if (!ms) return fs;
    scan_result r;
    lps_status s = check_all(ms, rep, &r);
    if (s) goto out;
    if (r.fatal) {
        s = lps_fail(LPS_EFORMAT, "%s: cannot repair: %s", path,
                     rep->nproblems ? rep->problems[0].msg : "not a ModelSet file");
        goto out;
    }
    if (rep->nproblems == 0) goto out; /* nothing to do */
    int intact = r.header_ok;
    uint64_t end = MS_FILE_HDR;
    for (int64_t i = 0; intact && i < r.n; i++) {
        intact = r.v[i].ok && r.v[i].e.offset == end;
        end += r.v[i].e.length;
    }
    if (intact) {
        /* Only the tail or the index is wrong: fix in place. */
        ms->count = 0;
        for (int64_t i = 0; i < r.n; i++)
            if (!ms_push(ms, &r.v[i].e)) {
                s = lps_fail(LPS_ENOMEM, "repair: out of memory");
                goto out;
            }
        ms->end = end;
        size_t n;
        unsigned char *ix = ms_build_index(ms, &n);
        if (!ix) {
            s = LPS_ENOMEM;
            goto out;
        }
        if (ftruncate(fd, (off_t)end) != 0)
            s = lps_fail(LPS_EIO, "%s: truncate failed: %s", path, strerror(errno));
        if (!s) s = ms_write(fd, end, ix, n, path);
        free(ix);
        if (!s && fdatasync(fd) != 0)
            s = lps_fail(LPS_EIO, "%s: fdatasync failed: %s", path, strerror(errno));
        rep->truncated = 1;
        goto out;
    }
    /* Damage inside: a new file with the intact records replaces the
     * original, which stays beside it as path.damaged. */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.repair-tmp", path);
    snprintf(rep->backup, sizeof rep->backup, "%s.damaged", path);
    if (access(rep->backup, F_OK) == 0) {
        s = lps_fail(LPS_EIO, "%s: cannot repair: %s exists from an earlier repair; move it away "
                     "first", path, rep->backup);
        rep->backup[0] = 0;
        goto out;
    }
    if ((s = rewrite(ms, &r, tmp))) {
        rep->backup[0] = 0;
        goto out;
    }
    if (link(path, rep->backup) != 0) {
        s = lps_fail(LPS_EIO, "%s: cannot keep the original as %s: %s", path, rep->backup,
                     strerror(errno));
        unlink(tmp);
        rep->backup[0] = 0;
        goto out;
    }
    if (rename(tmp, path) != 0) {
        s = lps_fail(LPS_EIO, "%s: cannot replace with %s: %s", path, tmp, strerror(errno));
        goto out;
    }
    s = ms_sync_dir(path);
    rep->rewrote = 1;
out:
    free(r.v);
    ms_free(ms); /* closes fd, which drops the lock */
    return s;
}
