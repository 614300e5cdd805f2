/* safetensors.c - read and write the Hugging Face safetensors format. */
#include "core/internal.h"
#include "io/json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Everything a parsed file owns besides the public arrays. */
typedef struct {
    char *strings;   /* decoded JSON strings: names and metadata point here */
    int64_t *dims;   /* all shapes, entries point here */
    uint8_t *data;   /* the data buffer when read from a file */
} owned;

static const struct { const char *name; int bits; } dtypes[LPS_ST_NDTYPES] = {
    [LPS_ST_BOOL] = {"BOOL", 8},       [LPS_ST_U8] = {"U8", 8},
    [LPS_ST_I8] = {"I8", 8},           [LPS_ST_I16] = {"I16", 16},
    [LPS_ST_U16] = {"U16", 16},        [LPS_ST_I32] = {"I32", 32},
    [LPS_ST_U32] = {"U32", 32},        [LPS_ST_I64] = {"I64", 64},
    [LPS_ST_U64] = {"U64", 64},        [LPS_ST_F16] = {"F16", 16},
    [LPS_ST_BF16] = {"BF16", 16},      [LPS_ST_F32] = {"F32", 32},
    [LPS_ST_F64] = {"F64", 64},        [LPS_ST_C64] = {"C64", 64},
    [LPS_ST_F8_E5M2] = {"F8_E5M2", 8}, [LPS_ST_F8_E4M3] = {"F8_E4M3", 8},
    [LPS_ST_F8_E8M0] = {"F8_E8M0", 8}, [LPS_ST_F6_E2M3] = {"F6_E2M3", 6},
    [LPS_ST_F6_E3M2] = {"F6_E3M2", 6}, [LPS_ST_F4] = {"F4", 4},
};

const char *lps_st_dtype_name(lps_st_dtype d)
{
    return (unsigned)d < LPS_ST_NDTYPES ? dtypes[d].name : "?";
}

int lps_st_dtype_bits(lps_st_dtype d) { return (unsigned)d < LPS_ST_NDTYPES ? dtypes[d].bits : 0; }

float lps_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13); /* inf, or NaN keeping its payload */
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else {
        float f = (float)man * 0x1p-24f; /* subnormal: exact, man < 2^10 */
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float lps_bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ---------------------------------------------------------------- reading */

/* Tensor names in messages: quoted, cut at 80 bytes. */
#define NAME_FMT "'%.80s'"

typedef struct {
    const char *name;
    uint64_t begin, end;
    size_t idx;
} sortkey;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const sortkey *)a)->name, ((const sortkey *)b)->name);
}

static int by_offsets(const void *a, const void *b)
{
    const sortkey *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static const char *json_type_name(int t)
{
    static const char *names[] = {"null", "false", "true", "a number", "a string", "an array",
                                  "an object"};
    return names[t];
}

static int get_index(const lps_json_node *v, int64_t *out)
{
    if (v->type != LPS_JSON_NUMBER || !v->is_int || !v->int_ok || v->ival < 0) return 0;
    *out = v->ival;
    return 1;
}

/* One tensor's {dtype, shape, data_offsets}; dims has room for its shape. */
static lps_status parse_entry(const lps_json *doc, const lps_json_node *v, const char *name,
                              lps_st_entry *e, int64_t *dims)
{
    if (v->type != LPS_JSON_OBJECT)
        return lps_fail(LPS_EFORMAT,
                        "safetensors: tensor " NAME_FMT " is %s, expected an object with "
                        "dtype, shape and data_offsets", name, json_type_name(v->type));
    const lps_json_node *dt = NULL, *sh = NULL, *off = NULL;
    for (uint32_t c = v->first; c; c = doc->nodes[c].next) {
        const lps_json_node *m = &doc->nodes[c];
        const char *k = doc->strings + m->key;
        const lps_json_node **slot = NULL;
        if (strcmp(k, "dtype") == 0) slot = &dt;
        else if (strcmp(k, "shape") == 0) slot = &sh;
        else if (strcmp(k, "data_offsets") == 0) slot = &off;
        else continue; /* unknown fields are ignored, as by the reference reader */
        if (*slot)
            return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT " has \"%s\" twice", name, k);
        *slot = m;
    }
    const char *missing = !dt ? "dtype" : !sh ? "shape" : !off ? "data_offsets" : NULL;
    if (missing)
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT " has no \"%s\"", name, missing);

    if (dt->type != LPS_JSON_STRING)
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": dtype is %s, expected a string",
                        name, json_type_name(dt->type));
    const char *ds = doc->strings + dt->str;
    int found = -1;
    for (int d = 0; d < LPS_ST_NDTYPES; d++)
        if (strlen(dtypes[d].name) == dt->str_len && strcmp(ds, dtypes[d].name) == 0) found = d;
    if (found < 0)
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": unknown dtype \"%.20s\"", name, ds);
    e->dtype = (lps_st_dtype)found;

    if (sh->type != LPS_JSON_ARRAY)
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": shape is %s, expected an array",
                        name, json_type_name(sh->type));
    if (sh->count > LPS_ST_MAX_RANK)
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": %u dimensions (at most %d)",
                        name, (unsigned)sh->count, LPS_ST_MAX_RANK);
    e->rank = (int)sh->count;
    int r = 0;
    for (uint32_t c = sh->first; c; c = doc->nodes[c].next, r++)
        if (!get_index(&doc->nodes[c], &dims[r]))
            return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": shape entry %d is not an "
                            "integer in 0..2^63-1", name, r + 1);
    e->shape = dims;

    if (off->type != LPS_JSON_ARRAY || off->count != 2)
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": data_offsets must be an array "
                        "[begin, end]", name);
    int64_t be[2];
    const lps_json_node *o0 = &doc->nodes[off->first];
    if (!get_index(o0, &be[0]) || !get_index(&doc->nodes[o0->next], &be[1]))
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": data_offsets must be integers in "
                        "0..2^63-1", name);
    if (be[1] < be[0])
        return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": data_offsets [%lld, %lld] end "
                        "before they begin", name, (long long)be[0], (long long)be[1]);
    e->begin = (uint64_t)be[0];
    e->end = (uint64_t)be[1];
    e->name = name;
    return LPS_OK;
}

static void shape_text(const lps_st_entry *e, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < e->rank && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)e->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Byte count, offsets, duplicates: everything that relates entries to each
 * other and to the data buffer. */
static lps_status check_layout(lps_safetensors *st, uint64_t data_len)
{
    for (size_t i = 0; i < st->n; i++) {
        const lps_st_entry *e = &st->entries[i];
        if (e->end > data_len)
            return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": data_offsets [%llu, %llu] run "
                            "past the end of the %llu-byte data buffer", e->name,
                            (unsigned long long)e->begin, (unsigned long long)e->end,
                            (unsigned long long)data_len);
        uint64_t numel = 1;
        int overflow = 0;
        for (int d = 0; d < e->rank; d++) {
            uint64_t s = (uint64_t)e->shape[d];
            if (s && numel > UINT64_MAX / s) overflow = 1;
            else numel *= s;
        }
        uint64_t bits = (uint64_t)lps_st_dtype_bits(e->dtype);
        char sh[160];
        shape_text(e, sh, sizeof sh);
        if (overflow || numel > UINT64_MAX / bits)
            return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": shape %s overflows 64 bits",
                            e->name, sh);
        if ((numel * bits) % 8)
            return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": %llu elements of %s do not "
                            "fill whole bytes", e->name, (unsigned long long)numel,
                            lps_st_dtype_name(e->dtype));
        uint64_t bytes = numel * bits / 8;
        if (e->end - e->begin != bytes)
            return lps_fail(LPS_EFORMAT, "safetensors: tensor " NAME_FMT ": shape %s of %s needs %llu "
                            "bytes but data_offsets [%llu, %llu] hold %llu", e->name, sh,
                            lps_st_dtype_name(e->dtype), (unsigned long long)bytes,
                            (unsigned long long)e->begin, (unsigned long long)e->end,
                            (unsigned long long)(e->end - e->begin));
    }
    sortkey *k = malloc((st->n ? st->n : 1) * sizeof *k);
    if (!k) return lps_fail(LPS_ENOMEM, "safetensors: cannot sort %zu tensors", st->n);
    for (size_t i = 0; i < st->n; i++)
        k[i] = (sortkey){st->entries[i].name, st->entries[i].begin, st->entries[i].end, i};
    lps_status s = LPS_OK;
    qsort(k, st->n, sizeof *k, by_name);
    for (size_t i = 1; i < st->n && !s; i++)
        if (strcmp(k[i - 1].name, k[i].name) == 0)
            s = lps_fail(LPS_EFORMAT, "safetensors: duplicate tensor name " NAME_FMT, k[i].name);
    qsort(k, st->n, sizeof *k, by_offsets);
    uint64_t pos = 0;
    for (size_t i = 0; i < st->n && !s; i++) {
        if (k[i].begin < pos)
            s = lps_fail(LPS_EFORMAT, "safetensors: tensors " NAME_FMT " and " NAME_FMT " overlap "
                         "(data_offsets begin at %llu, before %llu)", k[i - 1].name, k[i].name,
                         (unsigned long long)k[i].begin, (unsigned long long)pos);
        else if (k[i].begin > pos)
            s = lps_fail(LPS_EFORMAT, "safetensors: %llu-byte gap before tensor " NAME_FMT " (the "
                         "format requires data_offsets to tile the data buffer)",
                         (unsigned long long)(k[i].begin - pos), k[i].name);
        pos = k[i].end;
    }
    free(k);
    if (!s && pos != data_len)
        s = lps_fail(LPS_EFORMAT, "safetensors: %llu bytes after the last tensor's data belong to no "
                     "tensor (data buffer %llu bytes)", (unsigned long long)(data_len - pos),
                     (unsigned long long)data_len);
    return s;
}

/* Metadata keys are unique (sorted, so a hostile header cannot make this quadratic). */
static lps_status check_meta_keys(const lps_safetensors *st)
{
    sortkey *k = malloc((st->n_meta ? st->n_meta : 1) * sizeof *k);
    if (!k) return lps_fail(LPS_ENOMEM, "safetensors: cannot sort %zu metadata keys", st->n_meta);
    for (size_t i = 0; i < st->n_meta; i++) k[i] = (sortkey){st->meta_keys[i], 0, 0, i};
    qsort(k, st->n_meta, sizeof *k, by_name);
    lps_status s = LPS_OK;
    for (size_t i = 1; i < st->n_meta && !s; i++)
        if (strcmp(k[i - 1].name, k[i].name) == 0)
            s = lps_fail(LPS_EFORMAT, "safetensors: \"__metadata__\" has key " NAME_FMT " twice", k[i].name);
    free(k);
    return s;
}

static lps_status parse_header(lps_safetensors *st, const char *hdr, size_t n, uint64_t data_len)
{
    owned *own = st->owned_;
    lps_json *doc;
    lps_status s = lps_json_parse(&doc, hdr, n, "safetensors header");
    if (s) return s;
    const lps_json_node *root = &doc->nodes[0];
    if (root->type != LPS_JSON_OBJECT) {
        s = lps_fail(LPS_EFORMAT, "safetensors: the header is %s, expected a JSON object",
                     json_type_name(root->type));
        goto done;
    }
    /* Sizes: every tensor, shape entry and metadata pair is at least one
     * node, so doc->n bounds them all. */
    st->entries = calloc(root->count ? root->count : 1, sizeof *st->entries);
    own->dims = malloc((size_t)doc->n * sizeof *own->dims);
    if (!st->entries || !own->dims) {
        s = lps_fail(LPS_ENOMEM, "safetensors: cannot allocate %u header entries", root->count);
        goto done;
    }
    size_t ndims = 0;
    int seen_meta = 0;
    for (uint32_t c = root->first; c; c = doc->nodes[c].next) {
        const lps_json_node *m = &doc->nodes[c];
        const char *key = doc->strings + m->key;
        if (strlen(key) != m->key_len) {
            s = lps_fail(LPS_EFORMAT, "safetensors: a tensor name contains a NUL character");
            goto done;
        }
        if (strcmp(key, "__metadata__") != 0) {
            if ((s = parse_entry(doc, m, key, &st->entries[st->n], own->dims + ndims))) goto done;
            ndims += (size_t)st->entries[st->n].rank;
            st->n++;
            continue;
        }
        if (seen_meta++) {
            s = lps_fail(LPS_EFORMAT, "safetensors: \"__metadata__\" appears twice");
            goto done;
        }
        if (m->type != LPS_JSON_OBJECT) {
            s = lps_fail(LPS_EFORMAT, "safetensors: \"__metadata__\" is %s, expected an object of strings",
                         json_type_name(m->type));
            goto done;
        }
        st->meta_keys = malloc((m->count ? m->count : 1) * sizeof *st->meta_keys);
        st->meta_values = malloc((m->count ? m->count : 1) * sizeof *st->meta_values);
        if (!st->meta_keys || !st->meta_values) {
            s = lps_fail(LPS_ENOMEM, "safetensors: cannot allocate %u metadata entries", m->count);
            goto done;
        }
        for (uint32_t q = m->first; q; q = doc->nodes[q].next) {
            const lps_json_node *kv = &doc->nodes[q];
            const char *k = doc->strings + kv->key, *v = doc->strings + kv->str;
            if (kv->type != LPS_JSON_STRING) {
                s = lps_fail(LPS_EFORMAT, "safetensors: \"__metadata__\" value of " NAME_FMT " is %s, "
                             "expected a string", k, json_type_name(kv->type));
                goto done;
            }
            if (strlen(k) != kv->key_len || strlen(v) != kv->str_len) {
                s = lps_fail(LPS_EFORMAT, "safetensors: \"__metadata__\" holds a NUL character");
                goto done;
            }
            st->meta_keys[st->n_meta] = k;
            st->meta_values[st->n_meta++] = v;
        }
    }
    if ((s = check_meta_keys(st))) goto done;
    s = check_layout(st, data_len);
done:
    if (!s) { /* keep the strings, drop the tree */
        own->strings = doc->strings;
        doc->strings = NULL;
    }
    lps_json_free(doc);
    return s;
}

void lps_safetensors_free(lps_safetensors *st)
{
    if (!st) return;
    owned *own = st->owned_;
    if (own) {
        free(own->strings);
        free(own->dims);
        free(own->data);
        free(own);
    }
    free(st->entries);
    free(st->meta_keys);
    free(st->meta_values);
    free(st);
}

static lps_safetensors *new_st(void)
{
    lps_safetensors *st = calloc(1, sizeof *st);
    if (st && !(st->owned_ = calloc(1, sizeof(owned)))) {
        free(st);
        st = NULL;
    }
    if (!st) lps_fail(LPS_ENOMEM, "safetensors: cannot allocate a reader");
    return st;
}

static uint64_t rd_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static lps_status check_header_len(uint64_t n, uint64_t total)
{
    if (n > LPS_ST_MAX_HEADER)
        return lps_fail(LPS_EFORMAT, "safetensors: header length %llu exceeds the limit of %d bytes",
                        (unsigned long long)n, LPS_ST_MAX_HEADER);
    if (n > total - 8)
        return lps_fail(LPS_EFORMAT, "safetensors: header length %llu runs past the end of the "
                        "%llu-byte file", (unsigned long long)n, (unsigned long long)total);
    return LPS_OK;
}

lps_safetensors *lps_safetensors_parse(const void *buf, size_t len)
{
    const uint8_t *b = buf;
    if (len < 8) {
        lps_fail(LPS_EFORMAT, "safetensors: %zu bytes is too short for the 8-byte header length", len);
        return NULL;
    }
    uint64_t n = rd_u64(b);
    if (check_header_len(n, len)) return NULL;
    lps_safetensors *st = new_st();
    if (!st) return NULL;
    st->header_len = n;
    if (parse_header(st, (const char *)b + 8, (size_t)n, len - 8 - n)) {
        lps_safetensors_free(st);
        return NULL;
    }
    st->data = b + 8 + n;
    st->data_len = len - 8 - n;
    return st;
}

/* Re-raise the current error with the file name after "safetensors: ". */
static void name_file(lps_status s, const char *path)
{
    char msg[1024];
    const char *m = lps_errmsg();
    if (strncmp(m, "safetensors: ", 13) == 0) m += 13;
    else if (strncmp(m, "safetensors ", 12) == 0) m += 12; /* "safetensors header: ..." */
    snprintf(msg, sizeof msg, "%s", m);
    lps_fail(s, "safetensors: %.300s: %s", path, msg);
}

static lps_status read_exact(FILE *f, void *p, size_t n)
{
    if (n && fread(p, 1, n, f) != n)
        return lps_fail(LPS_EIO, "safetensors: read failed: %s",
                        ferror(f) ? strerror(errno) : "file shrank while reading");
    return LPS_OK;
}

static lps_safetensors *load(const char *path, int header_only)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lps_fail(LPS_EIO, "safetensors: cannot open '%.300s': %s", path, strerror(errno));
        return NULL;
    }
    lps_safetensors *st = NULL;
    char *hdr = NULL;
    lps_status s;
    struct stat sb;
    uint8_t lenbuf[8];
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        s = lps_fail(LPS_EIO, "safetensors: not a regular file");
        goto done;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) {
        s = lps_fail(LPS_EFORMAT, "safetensors: the file has %llu bytes, too few for the 8-byte "
                     "header length", (unsigned long long)size);
        goto done;
    }
    if ((s = read_exact(f, lenbuf, 8))) goto done;
    uint64_t n = rd_u64(lenbuf);
    if ((s = check_header_len(n, size))) goto done; /* before allocating n bytes */
    if (!(st = new_st()) || !(hdr = malloc(n ? (size_t)n : 1))) {
        s = lps_fail(LPS_ENOMEM, "safetensors: cannot allocate %llu bytes for the header",
                     (unsigned long long)n);
        goto done;
    }
    if ((s = read_exact(f, hdr, (size_t)n))) goto done;
    st->header_len = n;
    st->data_len = size - 8 - n;
    if ((s = parse_header(st, hdr, (size_t)n, st->data_len))) goto done;
    if (!header_only) {
        owned *own = st->owned_;
        /* data_len is what the file holds, so this size is real, not claimed. */
        if (st->data_len > SIZE_MAX || !(own->data = malloc(st->data_len ? st->data_len : 1))) {
            s = lps_fail(LPS_ENOMEM, "safetensors: cannot allocate %llu bytes of tensor data",
                         (unsigned long long)st->data_len);
            goto done;
        }
        if ((s = read_exact(f, own->data, (size_t)st->data_len))) goto done;
        st->data = own->data;
    }
done:
    free(hdr);
    fclose(f);
    if (s) {
        name_file(s, path);
        lps_safetensors_free(st);
        return NULL;
    }
    return st;
}

lps_safetensors *lps_safetensors_load(const char *path) { return load(path, 0); }
lps_safetensors *lps_safetensors_load_header(const char *path) { return load(path, 1); }

int64_t lps_safetensors_find(const lps_safetensors *st, const char *name)
{
    for (size_t i = 0; i < st->n; i++)
        if (strcmp(st->entries[i].name, name) == 0) return (int64_t)i;
    return -1;
}

static uint16_t rd_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Element k of an integer payload of dtype d, as a double. */
static double int_at(const uint8_t *p, lps_st_dtype d, int64_t k)
{
    switch (d) {
    case LPS_ST_BOOL: return p[k] != 0;
    case LPS_ST_U8: return p[k];
    case LPS_ST_I8: return (int8_t)p[k];
    case LPS_ST_I16: return (int16_t)rd_u16(p + 2 * k);
    case LPS_ST_U16: return rd_u16(p + 2 * k);
    case LPS_ST_I32: return (int32_t)rd_u32(p + 4 * k);
    case LPS_ST_U32: return rd_u32(p + 4 * k);
    case LPS_ST_I64: return (double)(int64_t)rd_u64(p + 8 * k);
    default: return (double)rd_u64(p + 8 * k); /* U64 */
    }
}

lps_tensor *lps_safetensors_tensor(const lps_safetensors *st, size_t i)
{
    if (i >= st->n) {
        lps_fail(LPS_ERANGE, "safetensors: tensor %zu out of range 1..%zu", i + 1, st->n);
        return NULL;
    }
    const lps_st_entry *e = &st->entries[i];
    if (!st->data) {
        lps_fail(LPS_EINVAL, "safetensors: tensor " NAME_FMT ": only the header was read", e->name);
        return NULL;
    }
    lps_st_dtype d = e->dtype;
    int integer = d == LPS_ST_BOOL || d == LPS_ST_U8 || d == LPS_ST_I8 || d == LPS_ST_I16 ||
                  d == LPS_ST_U16 || d == LPS_ST_I32 || d == LPS_ST_U32 || d == LPS_ST_I64 ||
                  d == LPS_ST_U64;
    if (d != LPS_ST_F32 && d != LPS_ST_F16 && d != LPS_ST_BF16 && d != LPS_ST_F64 && !integer) {
        lps_fail(LPS_EINVAL, "safetensors: tensor " NAME_FMT " has dtype %s; lualps reads F32, F16, "
                 "BF16, F64 and the integer types into float32", e->name, lps_st_dtype_name(d));
        return NULL;
    }
    if (e->rank > LPS_MAX_DIMS) {
        lps_fail(LPS_ESHAPE, "safetensors: tensor " NAME_FMT " has %d dimensions; lualps tensors have "
                 "1 to %d", e->name, e->rank, LPS_MAX_DIMS);
        return NULL;
    }
    int64_t one = 1;
    lps_tensor *t = e->rank ? lps_tensor_empty(e->rank, e->shape) : lps_tensor_empty(1, &one);
    if (!t) return NULL;
    const uint8_t *p = st->data + e->begin;
    float *o = t->data;
    int64_t n = t->numel;
    switch (d) {
    case LPS_ST_F32:
        for (int64_t k = 0; k < n; k++) {
            uint32_t b = rd_u32(p + 4 * k);
            memcpy(o + k, &b, 4);
        }
        break;
    case LPS_ST_F16:
        for (int64_t k = 0; k < n; k++) o[k] = lps_f16_to_f32(rd_u16(p + 2 * k));
        break;
    case LPS_ST_BF16:
        for (int64_t k = 0; k < n; k++) o[k] = lps_bf16_to_f32(rd_u16(p + 2 * k));
        break;
    case LPS_ST_F64:
        for (int64_t k = 0; k < n; k++) {
            uint64_t b = rd_u64(p + 8 * k);
            double v;
            memcpy(&v, &b, 8);
            o[k] = (float)v;
        }
        break;
    default: /* integers (counts such as batch norm's num_batches_tracked): rounded to nearest */
        for (int64_t k = 0; k < n; k++) o[k] = (float)int_at(p, d, k);
    }
    return t;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void sb_cat(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(sbuf *b, uint64_t v)
{
    char t[24];
    snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    sb_cat(b, t);
}

/* A JSON string as serde_json writes it: short escapes where JSON has them,
 * \u00XX for other control characters, everything else verbatim. */
static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        const char *esc = NULL;
        char u[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", c);
                esc = u;
            }
        }
        if (esc) sb_cat(b, esc);
        else sb_put(b, (const char *)&c, 1);
    }
    sb_put(b, "\"", 1);
}

/* order[k] = index of the k-th name in byte order; fails on a repeat. */
static lps_status sorted_order(const char *const *names, size_t n, size_t **order, const char *what)
{
    sortkey *k = malloc((n ? n : 1) * sizeof *k);
    size_t *o = malloc((n ? n : 1) * sizeof *o);
    lps_status s = LPS_OK;
    if (!k || !o) {
        s = lps_fail(LPS_ENOMEM, "safetensors: cannot sort %zu %ss", n, what);
        goto done;
    }
    for (size_t i = 0; i < n; i++) k[i] = (sortkey){names[i], 0, 0, i};
    qsort(k, n, sizeof *k, by_name);
    for (size_t i = 0; i < n; i++) {
        if (i && strcmp(k[i - 1].name, k[i].name) == 0) {
            s = lps_fail(LPS_EINVAL, "safetensors: duplicate %s " NAME_FMT, what, k[i].name);
            goto done;
        }
        o[i] = k[i].idx;
    }
done:
    free(k);
    if (s) free(o);
    else *order = o;
    return s;
}

/* The padded header and the write order of the tensors (perm[k] = index). */
static lps_status build_header(const char *const *names, const lps_tensor *const *tensors,
                               size_t n, const char *const *mk, const char *const *mv,
                               size_t n_meta, sbuf *hdr, size_t **perm, uint64_t *data_bytes)
{
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !tensors[i])
            return lps_fail(LPS_EINVAL, "safetensors: tensor %zu has no name or no data", i + 1);
        if (!lps_utf8_valid(names[i], strlen(names[i])))
            return lps_fail(LPS_EINVAL, "safetensors: tensor name %zu is not valid UTF-8", i + 1);
        if (strcmp(names[i], "__metadata__") == 0)
            return lps_fail(LPS_EINVAL, "safetensors: \"__metadata__\" is reserved, not a tensor name");
    }
    for (size_t i = 0; i < n_meta; i++) {
        if (!mk[i] || !mv[i])
            return lps_fail(LPS_EINVAL, "safetensors: metadata entry %zu is missing", i + 1);
        if (!lps_utf8_valid(mk[i], strlen(mk[i])) || !lps_utf8_valid(mv[i], strlen(mv[i])))
            return lps_fail(LPS_EINVAL, "safetensors: metadata entry %zu is not valid UTF-8", i + 1);
    }
    size_t *pm = NULL, *pk = NULL;
    lps_status s = sorted_order(names, n, &pm, "tensor name");
    if (!s) s = sorted_order(mk, n_meta, &pk, "metadata key");
    if (s) goto done;
    sb_put(hdr, "{", 1);
    if (n_meta) {
        sb_cat(hdr, "\"__metadata__\":{");
        for (size_t k = 0; k < n_meta; k++) {
            if (k) sb_put(hdr, ",", 1);
            sb_json_string(hdr, mk[pk[k]]);
            sb_put(hdr, ":", 1);
            sb_json_string(hdr, mv[pk[k]]);
        }
        sb_put(hdr, "}", 1);
    }
    uint64_t off = 0;
    for (size_t k = 0; k < n; k++) {
        const lps_tensor *t = tensors[pm[k]];
        if (k || n_meta) sb_put(hdr, ",", 1);
        sb_json_string(hdr, names[pm[k]]);
        sb_cat(hdr, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) sb_put(hdr, ",", 1);
            sb_u64(hdr, (uint64_t)t->shape[d]);
        }
        sb_cat(hdr, "],\"data_offsets\":[");
        sb_u64(hdr, off);
        sb_put(hdr, ",", 1);
        off += (uint64_t)t->numel * 4;
        sb_u64(hdr, off);
        sb_cat(hdr, "]}");
    }
    sb_put(hdr, "}", 1);
    while (hdr->n % 8) sb_put(hdr, " ", 1); /* data starts 8-aligned */
    if (hdr->oom) s = lps_fail(LPS_ENOMEM, "safetensors: cannot build the header");
    else if (hdr->n > LPS_ST_MAX_HEADER)
        s = lps_fail(LPS_EINVAL, "safetensors: header of %zu bytes exceeds the limit of %d bytes",
                     hdr->n, LPS_ST_MAX_HEADER);
    *data_bytes = off;
done:
    free(pk);
    if (s) free(pm);
    else *perm = pm;
    return s;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Little-endian float32 bytes of n values. */
static void pack_f32(uint8_t *o, const float *x, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        uint32_t b;
        memcpy(&b, x + k, 4);
        o[4 * k] = (uint8_t)b;
        o[4 * k + 1] = (uint8_t)(b >> 8);
        o[4 * k + 2] = (uint8_t)(b >> 16);
        o[4 * k + 3] = (uint8_t)(b >> 24);
    }
}

lps_status lps_safetensors_encode(const char *const *names, const lps_tensor *const *tensors,
                                  size_t n, const char *const *meta_keys,
                                  const char *const *meta_values, size_t n_meta, uint8_t **out,
                                  size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    sbuf hdr = {0};
    size_t *perm = NULL;
    uint64_t data_bytes;
    lps_status s = build_header(names, tensors, n, meta_keys, meta_values, n_meta, &hdr, &perm,
                                &data_bytes);
    if (s) {
        free(hdr.p);
        return s;
    }
    uint64_t total = 8 + hdr.n + data_bytes;
    uint8_t *buf = total <= SIZE_MAX ? malloc((size_t)total) : NULL;
    if (!buf) {
        s = lps_fail(LPS_ENOMEM, "safetensors: cannot allocate %llu bytes", (unsigned long long)total);
    } else {
        put_u64(buf, hdr.n);
        memcpy(buf + 8, hdr.p, hdr.n);
        uint8_t *p = buf + 8 + hdr.n;
        for (size_t k = 0; k < n; k++) {
            const lps_tensor *t = tensors[perm[k]];
            pack_f32(p, t->data, (size_t)t->numel);
            p += (size_t)t->numel * 4;
        }
        *out = buf;
        *out_len = (size_t)total;
    }
    free(hdr.p);
    free(perm);
    return s;
}

lps_status lps_safetensors_save(const char *path, const char *const *names,
                                const lps_tensor *const *tensors, size_t n,
                                const char *const *meta_keys, const char *const *meta_values,
                                size_t n_meta)
{
    sbuf hdr = {0};
    size_t *perm = NULL;
    uint64_t data_bytes;
    lps_status s = build_header(names, tensors, n, meta_keys, meta_values, n_meta, &hdr, &perm,
                                &data_bytes);
    if (s) {
        free(hdr.p);
        return s;
    }
    /* Write beside the target and rename, so a failure never leaves a
     * truncated file where a good one was. */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    uint8_t *chunk = malloc(1 << 16);
    FILE *f = NULL;
    if (!tmp || !chunk) {
        s = lps_fail(LPS_ENOMEM, "safetensors: cannot allocate write buffers");
        goto done;
    }
    snprintf(tmp, plen + 32, "%s.tmp%ld", path, (long)getpid());
    if (!(f = fopen(tmp, "wb"))) {
        s = lps_fail(LPS_EIO, "safetensors: cannot write '%.300s' (temporary file '%.300s'): %s", path,
                     tmp, strerror(errno));
        goto done;
    }
    uint8_t lenbuf[8];
    put_u64(lenbuf, hdr.n);
    int ok = fwrite(lenbuf, 1, 8, f) == 8 && fwrite(hdr.p, 1, hdr.n, f) == hdr.n;
    for (size_t k = 0; k < n && ok; k++) {
        const lps_tensor *t = tensors[perm[k]];
        for (int64_t at = 0; at < t->numel && ok; at += (1 << 14)) {
            size_t m = (size_t)(t->numel - at < (1 << 14) ? t->numel - at : (1 << 14));
            pack_f32(chunk, t->data + at, m);
            ok = fwrite(chunk, 4, m, f) == m;
        }
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        remove(tmp);
        s = lps_fail(LPS_EIO, "safetensors: cannot write '%.300s': %s", path, strerror(err));
    }
done:
    free(tmp);
    free(chunk);
    free(hdr.p);
    free(perm);
    return s;
}
