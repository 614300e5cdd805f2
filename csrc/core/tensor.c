/* tensor.c - tensor headers, reference-counted storage, creation and copies. */
#include "core/internal.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lps_storage {
    float *data;
    int64_t n;
    int refcount;
};

/* Float blocks: 64-byte aligned, each in a malloc chunk (aligned_alloc
 * would serve it by splitting a larger chunk: slower, and glibc keeps no
 * per-thread cache of those) at the first 64-byte boundary past a head
 * that holds the chunk and the block's capacity in bytes. A freed block of
 * at least CACHE_MIN bytes is kept (up to CACHE_SLOTS blocks and
 * CACHE_BYTES in all; the oldest goes back to malloc first) and handed out
 * again for a request it fits with at most half of it unused. A module
 * built, run and freed for each of many models (the class templates of a
 * stream) then reuses the previous one's activations and workspaces, where
 * malloc would give them back to the system and fault fresh pages in for
 * the next. The cache owns the blocks it keeps; a block handed out is its
 * caller's. Contents are never relied on: a block, new or reused, holds
 * whatever it held. Under AddressSanitizer the head and a cached block are
 * poisoned (a use after free still faults), and so is a reused block's
 * tail past the request. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

typedef struct {
    void *chunk;
    size_t cap;
} blockhead;

enum { ALIGN = 64, CACHE_SLOTS = 32 };
#define CACHE_MIN ((size_t)64 << 10)
#define CACHE_BYTES ((size_t)64 << 20)

static struct {
    char *p[CACHE_SLOTS]; /* oldest first */
    size_t cap[CACHE_SLOTS];
    int n;
    size_t bytes;
} cache;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static blockhead head_of(const char *p)
{
    blockhead h;
    UNPOISON(p - sizeof h, sizeof h);
    memcpy(&h, p - sizeof h, sizeof h);
    POISON(p - sizeof h, sizeof h);
    return h;
}

static void cache_remove(int i)
{
    cache.bytes -= cache.cap[i];
    cache.n--;
    memmove(cache.p + i, cache.p + i + 1, sizeof *cache.p * (size_t)(cache.n - i));
    memmove(cache.cap + i, cache.cap + i + 1, sizeof *cache.cap * (size_t)(cache.n - i));
}

/* The smallest cached block that fits `bytes` (of at most twice that), or NULL. */
static char *cache_take(size_t bytes)
{
    char *p = NULL;
    pthread_mutex_lock(&cache_lock);
    int best = -1;
    for (int i = 0; i < cache.n; i++)
        if (cache.cap[i] >= bytes && cache.cap[i] / 2 <= bytes && (best < 0 || cache.cap[i] < cache.cap[best]))
            best = i;
    if (best >= 0) {
        p = cache.p[best];
        cache_remove(best);
    }
    pthread_mutex_unlock(&cache_lock);
    return p;
}

/* Keep block p of cap bytes, making room by giving the oldest back. */
static void cache_put(char *p, size_t cap)
{
    char *out[CACHE_SLOTS];
    int nout = 0;
    POISON(p, cap);
    pthread_mutex_lock(&cache_lock);
    while (cache.n == CACHE_SLOTS || cache.bytes + cap > CACHE_BYTES) {
        out[nout++] = cache.p[0];
        cache_remove(0);
    }
    cache.p[cache.n] = p;
    cache.cap[cache.n++] = cap;
    cache.bytes += cap;
    pthread_mutex_unlock(&cache_lock);
    for (int i = 0; i < nout; i++) free(head_of(out[i]).chunk);
}

float *lps_alloc_floats(int64_t n, const char *op)
{
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
    bytes = (bytes + ALIGN - 1) & ~(size_t)(ALIGN - 1); /* whole lines: a block's tail is its own */
    char *p = bytes >= CACHE_MIN ? cache_take(bytes) : NULL;
    if (p) {
        UNPOISON(p, bytes);
        return (float *)p;
    }
    blockhead h = {malloc(sizeof h + ALIGN - 1 + bytes), bytes};
    if (!h.chunk) {
        lps_fail(LPS_ENOMEM, "%s: cannot allocate %lld floats", op, (long long)n);
        return NULL;
    }
    uintptr_t at = ((uintptr_t)h.chunk + sizeof h + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
    p = (char *)h.chunk + (at - (uintptr_t)h.chunk);
    memcpy(p - sizeof h, &h, sizeof h);
    POISON(p - sizeof h, sizeof h);
    return (float *)p;
}

void lps_free_floats(float *block)
{
    if (!block) return;
    char *p = (char *)block;
    blockhead h = head_of(p);
    if (h.cap >= CACHE_MIN && h.cap <= CACHE_BYTES) {
        cache_put(p, h.cap);
        return;
    }
    free(h.chunk);
}

void lps_floats_cached(int *blocks, size_t *bytes)
{
    pthread_mutex_lock(&cache_lock);
    if (blocks) *blocks = cache.n;
    if (bytes) *bytes = cache.bytes;
    pthread_mutex_unlock(&cache_lock);
}

void lps_floats_cache_clear(void)
{
    char *out[CACHE_SLOTS];
    pthread_mutex_lock(&cache_lock);
    int n = cache.n;
    memcpy(out, cache.p, sizeof *out * (size_t)n);
    cache.n = 0;
    cache.bytes = 0;
    pthread_mutex_unlock(&cache_lock);
    for (int i = 0; i < n; i++) free(head_of(out[i]).chunk); /* outside the lock, as cache_put frees */
}

lps_status lps_shape_check(const char *op, int ndim, const int64_t *shape, int64_t *numel)
{
    if (ndim < 1 || ndim > LPS_MAX_DIMS)
        return lps_fail(LPS_ESHAPE, "%s: tensors have 1 to %d dimensions, got %d", op,
                        LPS_MAX_DIMS, ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return lps_fail(LPS_ESHAPE, "%s: size %lld of dimension %d is negative", op,
                            (long long)shape[i], i + 1);
        /* a size past the limit is refused even beside a 0 (an empty tensor
         * of such a shape would still overflow the shape flows' arithmetic) */
        if (shape[i] > LPS_MAX_NUMEL || (shape[i] > 0 && n > LPS_MAX_NUMEL / shape[i]))
            return lps_fail(LPS_ENOMEM, "%s: element count overflows (limit 2^40) at dimension %d",
                            op, i + 1);
        n *= shape[i];
    }
    if (numel) *numel = n;
    return LPS_OK;
}

const char *lps_shape_str(const lps_tensor *t, char *buf, size_t n)
{
    size_t off = 0;
    off += (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? "x%lld" : "%lld", (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, ")");
    return buf;
}

static lps_tensor *header(lps_storage *st, int64_t offset, int ndim, const int64_t *shape,
                          int64_t numel)
{
    lps_tensor *t = malloc(sizeof *t);
    if (!t) {
        lps_fail(LPS_ENOMEM, "tensor: cannot allocate a header");
        return NULL;
    }
    t->storage = st;
    t->data = st->data + offset;
    t->ndim = ndim;
    for (int i = 0; i < LPS_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    t->numel = numel;
    st->refcount++;
    return t;
}

static lps_tensor *tensor_alloc(int ndim, const int64_t *shape, int zero)
{
    int64_t numel;
    if (lps_shape_check("tensor", ndim, shape, &numel)) return NULL;
    lps_storage *st = malloc(sizeof *st);
    if (!st) {
        lps_fail(LPS_ENOMEM, "tensor: cannot allocate storage");
        return NULL;
    }
    st->data = lps_alloc_floats(numel, "tensor");
    if (!st->data) {
        free(st);
        return NULL;
    }
    if (zero) memset(st->data, 0, (size_t)numel * sizeof(float));
    st->n = numel;
    st->refcount = 0;
    lps_tensor *t = header(st, 0, ndim, shape, numel);
    if (!t) {
        lps_free_floats(st->data);
        free(st);
    }
    return t;
}

lps_tensor *lps_tensor_new(int ndim, const int64_t *shape) { return tensor_alloc(ndim, shape, 1); }
lps_tensor *lps_tensor_empty(int ndim, const int64_t *shape) { return tensor_alloc(ndim, shape, 0); }

lps_tensor *lps_tensor_new2(int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    return lps_tensor_new(2, shape);
}

lps_tensor *lps_tensor_clone(const lps_tensor *t)
{
    lps_tensor *c = lps_tensor_empty(t->ndim, t->shape);
    if (c && t->numel) memcpy(c->data, t->data, (size_t)t->numel * sizeof(float));
    return c;
}

lps_tensor *lps_tensor_rows(const lps_tensor *t, int64_t start, int64_t count)
{
    int64_t rows = t->shape[0];
    if (start < 0 || count < 0 || start > rows || count > rows - start) {
        lps_fail(LPS_ERANGE, "rows: rows %lld..%lld out of range for %lld rows",
                 (long long)start + 1, (long long)(start + count), (long long)rows);
        return NULL;
    }
    int64_t shape[LPS_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = count;
    int64_t rowsize = rows ? t->numel / rows : 0;
    if (rows == 0) { /* numel is 0; row size from the other dims */
        rowsize = 1;
        for (int i = 1; i < t->ndim; i++) rowsize *= t->shape[i];
    }
    return header(t->storage, (t->data - t->storage->data) + start * rowsize, t->ndim, shape,
                  count * rowsize);
}

lps_tensor *lps_tensor_reshape(const lps_tensor *t, int ndim, const int64_t *shape)
{
    int64_t numel;
    if (lps_shape_check("reshape", ndim, shape, &numel)) return NULL;
    if (numel != t->numel) {
        lps_fail(LPS_ESHAPE, "reshape: cannot view %s (%lld elements) with %lld elements", SH(t),
                 (long long)t->numel, (long long)numel);
        return NULL;
    }
    return header(t->storage, t->data - t->storage->data, ndim, shape, numel);
}

void lps_tensor_free(lps_tensor *t)
{
    if (!t) return;
    lps_storage *st = t->storage;
    if (--st->refcount == 0) {
        lps_free_floats(st->data);
        free(st);
    }
    free(t);
}

int lps_tensor_refcount(const lps_tensor *t) { return t->storage->refcount; }

int lps_same_shape(const lps_tensor *a, const lps_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

lps_status lps_fill(lps_tensor *t, float v)
{
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = v;
    return LPS_OK;
}

lps_status lps_copy(lps_tensor *dst, const lps_tensor *src)
{
    if (dst->numel != src->numel)
        return lps_fail(LPS_ESHAPE, "copy: destination %s and source %s differ in size", SH(dst),
                        SH(src));
    if (dst->numel) memmove(dst->data, src->data, (size_t)src->numel * sizeof(float));
    return LPS_OK;
}

lps_status lps_arange(lps_tensor *t)
{
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = (float)i;
    return LPS_OK;
}

lps_status lps_rand(lps_tensor *t, lps_rng *r, float lo, float hi)
{
    if (!(lo <= hi) || !isfinite(lo) || !isfinite(hi))
        return lps_fail(LPS_EINVAL, "rand: need finite lo <= hi, got %g and %g", lo, hi);
    for (int64_t i = 0; i < t->numel; i++)
        t->data[i] = (float)(lo + (hi - lo) * lps_rng_uniform(r));
    return LPS_OK;
}

lps_status lps_randn(lps_tensor *t, lps_rng *r, float mean, float sd)
{
    if (!isfinite(mean) || !isfinite(sd) || sd < 0)
        return lps_fail(LPS_EINVAL, "randn: need finite mean and sd >= 0, got %g and %g", mean, sd);
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = (float)(mean + sd * lps_rng_normal(r));
    return LPS_OK;
}

lps_status lps_transpose(lps_tensor *out, const lps_tensor *t)
{
    if (t->ndim != 2 || out->ndim != 2 || out->shape[0] != t->shape[1] ||
        out->shape[1] != t->shape[0])
        return lps_fail(LPS_ESHAPE, "t: needs a 2-D tensor and a transposed output, got %s and %s",
                        SH(t), SH(out));
    int64_t m = t->shape[0], n = t->shape[1];
    const int64_t B = 32; /* blocked so both sides stay in cache */
    for (int64_t i0 = 0; i0 < m; i0 += B)
        for (int64_t j0 = 0; j0 < n; j0 += B)
            for (int64_t i = i0; i < m && i < i0 + B; i++)
                for (int64_t j = j0; j < n && j < j0 + B; j++)
                    out->data[j * m + i] = t->data[i * n + j];
    return LPS_OK;
}

lps_status lps_index_rows(lps_tensor *out, const lps_tensor *a, const int64_t *idx, int64_t n)
{
    int64_t rows = a->shape[0], rowsize = 1;
    for (int i = 1; i < a->ndim; i++) rowsize *= a->shape[i];
    if (out->shape[0] != n || out->numel != n * rowsize)
        return lps_fail(LPS_ESHAPE, "index_rows: output %s does not hold %lld rows of %s", SH(out),
                        (long long)n, SH(a));
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rows)
            return lps_fail(LPS_ERANGE, "index_rows: index %lld (position %lld) out of range 1..%lld",
                            (long long)idx[i] + 1, (long long)i + 1, (long long)rows);
    for (int64_t i = 0; i < n; i++)
        memcpy(out->data + i * rowsize, a->data + idx[i] * rowsize, (size_t)rowsize * sizeof(float));
    return LPS_OK;
}

int lps_allclose(const lps_tensor *a, const lps_tensor *b, float rtol, float atol)
{
    if (!lps_same_shape(a, b)) return 0;
    for (int64_t i = 0; i < a->numel; i++) {
        float x = a->data[i], y = b->data[i];
        if (x == y) continue; /* equal infinities */
        if (!(fabsf(x - y) <= atol + rtol * fabsf(y))) return 0;
    }
    return 1;
}
