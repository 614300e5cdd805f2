/* arch.c - parse, check and write the architecture list (see arch.h). */
#include "io/arch.h"
#include "io/json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const type_names[LPS_ARCH_NTYPES] = {
    [LPS_ARCH_INPUT] = "input", [LPS_ARCH_CONV2D] = "conv2d",
    [LPS_ARCH_MAXPOOL2D] = "maxpool2d", [LPS_ARCH_RELU] = "relu", [LPS_ARCH_TANH] = "tanh",
    [LPS_ARCH_FLATTEN] = "flatten", [LPS_ARCH_LINEAR] = "linear"};

const char *lps_arch_type_name(lps_arch_type t)
{
    return (unsigned)t < LPS_ARCH_NTYPES ? type_names[t] : "?";
}

/* The integer fields of each type. Limits are those of the layer
 * constructors, so whatever parses can be built. def < 0: required, except
 * DEF_KERNEL (maxpool2d stride defaults to the kernel). */
#define REQUIRED (-1)
#define DEF_KERNEL (-2)
#define MAX_CHANNELS ((int64_t)1 << 20)
#define MAX_FEATURES ((int64_t)INT32_MAX / 2)
typedef struct {
    const char *key;
    int64_t lo, hi, def;
} field;

static const field conv_fields[] = {{"in", 1, MAX_CHANNELS, REQUIRED},
                                    {"out", 1, MAX_CHANNELS, REQUIRED},
                                    {"kernel", 1, 1024, REQUIRED},
                                    {"stride", 1, 1024, 1},
                                    {"padding", 0, 1024, 0},
                                    {NULL, 0, 0, 0}};
static const field pool_fields[] = {{"kernel", 1, 1024, REQUIRED},
                                    {"stride", 1, 1024, DEF_KERNEL},
                                    {NULL, 0, 0, 0}};
static const field linear_fields[] = {{"in", 1, MAX_FEATURES, REQUIRED},
                                      {"out", 1, MAX_FEATURES, REQUIRED},
                                      {NULL, 0, 0, 0}};
static const field no_fields[] = {{NULL, 0, 0, 0}};

static const field *fields_of(lps_arch_type t)
{
    switch (t) {
    case LPS_ARCH_CONV2D: return conv_fields;
    case LPS_ARCH_MAXPOOL2D: return pool_fields;
    case LPS_ARCH_LINEAR: return linear_fields;
    default: return no_fields;
    }
}

static const char *const keys_text[LPS_ARCH_NTYPES] = {
    [LPS_ARCH_INPUT] = "shape", [LPS_ARCH_CONV2D] = "in, out, kernel, stride, padding",
    [LPS_ARCH_MAXPOOL2D] = "kernel, stride", [LPS_ARCH_RELU] = "no other key",
    [LPS_ARCH_TANH] = "no other key", [LPS_ARCH_FLATTEN] = "no other key",
    [LPS_ARCH_LINEAR] = "in, out"};

static const char *json_type_name(int t)
{
    static const char *names[] = {"null", "false", "true", "a number", "a string", "an array",
                                  "an object"};
    return names[t];
}

static int key_is(const lps_json *doc, const lps_json_node *m, const char *k)
{
    size_t n = strlen(k);
    return m->key_len == n && memcmp(doc->strings + m->key, k, n) == 0;
}

/* "(8x7x7)", with "?" for unknown sizes. */
static const char *shape_text(int rank, const int64_t *d, char *buf, size_t n)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "(");
    for (int i = 0; i < rank && o < n; i++) {
        if (d[i] == LPS_ARCH_UNKNOWN) o += (size_t)snprintf(buf + o, n - o, "%s?", i ? "x" : "");
        else o += (size_t)snprintf(buf + o, n - o, "%s%" PRId64, i ? "x" : "", d[i]);
    }
    if (o < n) snprintf(buf + o, n - o, ")");
    return buf;
}
#define SHAPE(r, d) shape_text((r), (d), (char[64]){0}, 64)

/* A number's text as written, for "got 2.5" (at most 24 characters). */
static const char *number_text(const char *text, size_t len, const lps_json_node *v, char *buf)
{
    size_t i = v->pos, k = 0;
    while (i < len && k < 24 && strchr("+-.eE0123456789", text[i]) && text[i]) buf[k++] = text[i++];
    buf[k] = '\0';
    return buf;
}

typedef struct {
    const char *text;
    size_t len;
    const lps_json *doc;
} src;

/* An integer field in lo..hi. `who` names the layer ("layer 2 (conv2d)"). */
static lps_status get_int(const src *s, const lps_json_node *v, const char *who, const char *key,
                          int64_t lo, int64_t hi, int64_t *out)
{
    char nb[32];
    if (v->type != LPS_JSON_NUMBER)
        return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" must be an integer, got %s", who, key,
                        json_type_name(v->type));
    if (!v->is_int)
        return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" must be an integer, got %s", who, key,
                        number_text(s->text, s->len, v, nb));
    if (!v->int_ok || v->ival < lo || v->ival > hi)
        return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" is %s, expected %" PRId64 "..%" PRId64,
                        who, key, number_text(s->text, s->len, v, nb), lo, hi);
    *out = v->ival;
    return LPS_OK;
}

static lps_status parse_shape(const src *s, const lps_json_node *v, lps_arch_entry *e)
{
    if (v->type != LPS_JSON_ARRAY || (v->count != 1 && v->count != 3))
        return lps_fail(LPS_EFORMAT, "arch: input: \"shape\" must be [features] or [channels, "
                        "height, width] (no batch size), got %s%s%u%s",
                        v->type == LPS_JSON_ARRAY ? "" : json_type_name(v->type),
                        v->type == LPS_JSON_ARRAY ? "an array of " : "",
                        v->type == LPS_JSON_ARRAY ? v->count : 0u,
                        v->type == LPS_JSON_ARRAY ? " sizes" : "");
    e->rank = (int)v->count;
    int i = 0;
    static const char *const names[2][3] = {{"features", "", ""}, {"channels", "height", "width"}};
    for (uint32_t c = v->first; c; c = s->doc->nodes[c].next, i++) {
        int64_t hi = e->rank == 1 ? MAX_FEATURES : MAX_CHANNELS;
        lps_status st = get_int(s, &s->doc->nodes[c], "input", names[e->rank == 3][i], 1, hi,
                                &e->shape[i]);
        if (st) return st;
    }
    return LPS_OK;
}

/* One entry of the list: its type, then its fields. */
static lps_status parse_entry(const src *s, const lps_json_node *v, size_t k, int layer,
                              lps_arch_entry *e)
{
    const lps_json *doc = s->doc;
    if (v->type != LPS_JSON_OBJECT)
        return lps_fail(LPS_EFORMAT, "arch: entry %zu of the list is %s, expected an object like "
                        "{\"type\":\"relu\"}", k, json_type_name(v->type));
    const lps_json_node *tn = NULL;
    for (uint32_t c = v->first; c; c = doc->nodes[c].next)
        if (key_is(doc, &doc->nodes[c], "type")) {
            if (tn) return lps_fail(LPS_EFORMAT, "arch: entry %zu has \"type\" twice", k);
            tn = &doc->nodes[c];
        }
    if (!tn) return lps_fail(LPS_EFORMAT, "arch: entry %zu has no \"type\"", k);
    if (tn->type != LPS_JSON_STRING)
        return lps_fail(LPS_EFORMAT, "arch: entry %zu: \"type\" is %s, expected a string", k,
                        json_type_name(tn->type));
    const char *tname = doc->strings + tn->str;
    int t = -1;
    for (int i = 0; i < LPS_ARCH_NTYPES; i++)
        if (tn->str_len == strlen(type_names[i]) && strcmp(tname, type_names[i]) == 0) t = i;
    if (t < 0)
        return lps_fail(LPS_EFORMAT, "arch: entry %zu: unknown type \"%.40s\" (known: input, "
                        "conv2d, maxpool2d, relu, tanh, flatten, linear)", k, tname);
    if (t == LPS_ARCH_INPUT && k != 1)
        return lps_fail(LPS_EFORMAT, "arch: entry %zu: an input entry may only come first", k);
    e->type = (lps_arch_type)t;

    char who[48];
    if (t == LPS_ARCH_INPUT) snprintf(who, sizeof who, "input");
    else snprintf(who, sizeof who, "layer %d (%s)", layer, type_names[t]);
    const field *f = fields_of(e->type);
    int64_t val[5];
    int seen[5] = {0}, seen_shape = 0;
    for (uint32_t c = v->first; c; c = doc->nodes[c].next) {
        const lps_json_node *m = &doc->nodes[c];
        if (m == tn) continue;
        if (t == LPS_ARCH_INPUT && key_is(doc, m, "shape")) {
            if (seen_shape++) return lps_fail(LPS_EFORMAT, "arch: input: \"shape\" appears twice");
            lps_status st = parse_shape(s, m, e);
            if (st) return st;
            continue;
        }
        int j = 0;
        while (f[j].key && !key_is(doc, m, f[j].key)) j++;
        if (!f[j].key)
            return lps_fail(LPS_EFORMAT, "arch: %s: unknown key \"%.40s\" (%s %s takes %s)", who,
                            doc->strings + m->key, t == LPS_ARCH_INPUT ? "an" : "a",
                            type_names[t], keys_text[t]);
        if (seen[j]++) return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" appears twice", who, f[j].key);
        lps_status st = get_int(s, m, who, f[j].key, f[j].lo, f[j].hi, &val[j]);
        if (st) return st;
    }
    if (t == LPS_ARCH_INPUT && !seen_shape)
        return lps_fail(LPS_EFORMAT, "arch: input: \"shape\" is missing");
    for (int j = 0; f[j].key; j++) {
        if (seen[j]) continue;
        if (f[j].def == REQUIRED)
            return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" is missing", who, f[j].key);
        val[j] = f[j].def == DEF_KERNEL ? val[0] : f[j].def; /* the kernel is required, field 0 */
    }
    switch (e->type) {
    case LPS_ARCH_CONV2D:
        e->in = val[0], e->out = val[1], e->kernel = val[2], e->stride = val[3], e->padding = val[4];
        break;
    case LPS_ARCH_MAXPOOL2D: e->kernel = val[0], e->stride = val[1]; break;
    case LPS_ARCH_LINEAR: e->in = val[0], e->out = val[1]; break;
    default: break;
    }
    return LPS_OK;
}

/* What flows between layers, for the chain check. */
typedef struct {
    int rank;        /* 0 unknown, 1, 3 */
    int64_t d[3];
    int64_t mult;    /* rank 1, unknown size: a known factor (flattened channels) */
    int flat;        /* rank 1 made by flattening pre */
    int64_t pre[3];
} flow;

static int64_t unk_or(int64_t a, int64_t v) { return a == LPS_ARCH_UNKNOWN ? LPS_ARCH_UNKNOWN : v; }

/* Check entry e against what flows into it (from `from`) and advance. */
static lps_status chain(const lps_arch_entry *e, int layer, const char *from, flow *f)
{
    const char *tn = type_names[e->type];
    switch (e->type) {
    case LPS_ARCH_INPUT: break;
    case LPS_ARCH_CONV2D:
    case LPS_ARCH_MAXPOOL2D: {
        int conv = e->type == LPS_ARCH_CONV2D;
        if (f->rank == 1)
            return lps_fail(LPS_ESHAPE, "arch: layer %d (%s): needs (channels x height x width) "
                            "but %s gives %s features", layer, tn, from, SHAPE(1, f->d));
        if (f->rank == 0) {
            f->rank = 3;
            f->d[0] = conv ? e->out : LPS_ARCH_UNKNOWN;
            f->d[1] = f->d[2] = LPS_ARCH_UNKNOWN;
            break;
        }
        if (conv && f->d[0] != LPS_ARCH_UNKNOWN && f->d[0] != e->in)
            return lps_fail(LPS_ESHAPE, "arch: layer %d (conv2d): \"in\" is %" PRId64 " but %s "
                            "gives %" PRId64 " channels %s", layer, e->in, from, f->d[0],
                            SHAPE(3, f->d));
        int64_t pad = conv ? e->padding : 0;
        for (int i = 1; i < 3; i++)
            if (f->d[i] != LPS_ARCH_UNKNOWN && f->d[i] + 2 * pad < e->kernel)
                return lps_fail(LPS_ESHAPE, "arch: layer %d (%s): kernel %" PRId64 " is larger "
                                "than its input%s: %s gives %s", layer, tn, e->kernel,
                                pad ? " plus padding" : "", from, SHAPE(3, f->d));
        if (conv) f->d[0] = e->out;
        for (int i = 1; i < 3; i++)
            f->d[i] = unk_or(f->d[i], (f->d[i] + 2 * pad - e->kernel) / e->stride + 1);
        break;
    }
    case LPS_ARCH_RELU:
    case LPS_ARCH_TANH: break;
    case LPS_ARCH_FLATTEN:
        if (f->rank == 3) {
            memcpy(f->pre, f->d, sizeof f->pre);
            f->flat = 1;
            f->mult = 1;
            int64_t n = 1;
            for (int i = 0; i < 3; i++) {
                if (f->d[i] == LPS_ARCH_UNKNOWN) n = LPS_ARCH_UNKNOWN;
                else if (n != LPS_ARCH_UNKNOWN) {
                    /* padding can grow sizes layer after layer: no overflow */
                    if (n > ((int64_t)1 << 62) / f->d[i])
                        return lps_fail(LPS_ESHAPE, "arch: layer %d (flatten): %s from %s has "
                                        "more than 2^62 elements", layer, SHAPE(3, f->d), from);
                    n *= f->d[i];
                }
            }
            if (n == LPS_ARCH_UNKNOWN && f->d[0] != LPS_ARCH_UNKNOWN) f->mult = f->d[0];
            f->rank = 1;
            f->d[0] = n;
        } else if (f->rank == 0) {
            f->rank = 1;
            f->d[0] = LPS_ARCH_UNKNOWN;
            f->mult = 1;
            f->flat = 0;
        }
        break;
    case LPS_ARCH_LINEAR:
        if (f->rank == 3)
            return lps_fail(LPS_ESHAPE, "arch: layer %d (linear): needs flat features but %s gives "
                            "%s: put a flatten before it", layer, from, SHAPE(3, f->d));
        if (f->rank == 1 && f->d[0] != LPS_ARCH_UNKNOWN && f->d[0] != e->in) {
            if (f->flat)
                return lps_fail(LPS_ESHAPE, "arch: layer %d (linear): \"in\" is %" PRId64 " but "
                                "%s gives %" PRId64 " features: %s flattened", layer, e->in,
                                from, f->d[0], SHAPE(3, f->pre));
            return lps_fail(LPS_ESHAPE, "arch: layer %d (linear): \"in\" is %" PRId64 " but %s "
                            "gives %" PRId64 " features", layer, e->in, from, f->d[0]);
        }
        if (f->rank == 1 && f->d[0] == LPS_ARCH_UNKNOWN && e->in % f->mult != 0)
            return lps_fail(LPS_ESHAPE, "arch: layer %d (linear): \"in\" is %" PRId64 ", not a "
                            "multiple of the %" PRId64 " channels flattened before it "
                            "(channels x height x width)", layer, e->in, f->mult);
        f->rank = 1;
        f->d[0] = e->out;
        f->flat = 0;
        f->mult = 1;
        break;
    default: break;
    }
    return LPS_OK;
}

void lps_arch_free(lps_arch *a)
{
    if (!a) return;
    free(a->entries);
    free(a);
}

lps_status lps_arch_parse(lps_arch **out, const char *text, size_t len)
{
    *out = NULL;
    lps_json *doc;
    lps_status s = lps_json_parse(&doc, text, len, "arch");
    if (s) return s;
    const lps_json_node *root = &doc->nodes[0];
    lps_arch *a = NULL;
    if (root->type != LPS_JSON_ARRAY) {
        s = lps_fail(LPS_EFORMAT, "arch: expected a JSON array of layers, got %s",
                     json_type_name(root->type));
        goto done;
    }
    if (root->count == 0) {
        s = lps_fail(LPS_EFORMAT, "arch: the list has no layers");
        goto done;
    }
    if (root->count > LPS_ARCH_MAX_LAYERS + 1) {
        s = lps_fail(LPS_EFORMAT, "arch: more than %d layers", LPS_ARCH_MAX_LAYERS);
        goto done;
    }
    a = calloc(1, sizeof *a);
    if (a) a->entries = calloc(root->count, sizeof *a->entries);
    if (!a || !a->entries) {
        s = lps_fail(LPS_ENOMEM, "arch: cannot allocate %u entries", root->count);
        goto done;
    }
    src sr = {text, len, doc};
    flow f = {0};
    char from[48] = "the input";
    size_t k = 0;
    for (uint32_t c = root->first; c; c = doc->nodes[c].next) {
        lps_arch_entry *e = &a->entries[k++];
        int layer = (int)k - a->has_input; /* the input entry is not a layer */
        if (layer > LPS_ARCH_MAX_LAYERS) {
            s = lps_fail(LPS_EFORMAT, "arch: more than %d layers", LPS_ARCH_MAX_LAYERS);
            goto done;
        }
        if ((s = parse_entry(&sr, &doc->nodes[c], k, layer, e))) goto done;
        if (e->type == LPS_ARCH_INPUT) {
            a->has_input = 1;
            f.rank = e->rank;
            memcpy(f.d, e->shape, sizeof f.d);
            f.mult = 1;
            continue;
        }
        if ((s = chain(e, layer, from, &f))) goto done;
        e->rank = f.rank;
        memcpy(e->shape, f.d, sizeof e->shape);
        snprintf(from, sizeof from, "layer %d (%s)", layer, type_names[e->type]);
    }
    if (a->has_input && root->count == 1) {
        s = lps_fail(LPS_EFORMAT, "arch: the list has an input entry but no layers");
        goto done;
    }
    a->n = root->count;
done:
    lps_json_free(doc);
    if (s) lps_arch_free(a);
    else *out = a;
    return s;
}

lps_status lps_arch_to_json(const lps_arch *a, char **text, size_t *len)
{
    *text = NULL;
    /* An entry writes at most ~95 bytes: parsing bounds every number. */
    size_t cap = a->n * 128 + 8, o = 0;
    char *b = malloc(cap);
    if (!b) return lps_fail(LPS_ENOMEM, "arch: cannot allocate %zu bytes of JSON", cap);
    o += (size_t)snprintf(b + o, cap - o, "[");
    for (size_t i = 0; i < a->n; i++) {
        const lps_arch_entry *e = &a->entries[i];
        o += (size_t)snprintf(b + o, cap - o, "%s{\"type\":\"%s\"", i ? "," : "",
                              lps_arch_type_name(e->type));
        switch (e->type) {
        case LPS_ARCH_INPUT:
            o += (size_t)snprintf(b + o, cap - o, ",\"shape\":[");
            for (int d = 0; d < e->rank; d++)
                o += (size_t)snprintf(b + o, cap - o, "%s%" PRId64, d ? "," : "", e->shape[d]);
            o += (size_t)snprintf(b + o, cap - o, "]");
            break;
        case LPS_ARCH_CONV2D:
            o += (size_t)snprintf(b + o, cap - o, ",\"in\":%" PRId64 ",\"out\":%" PRId64
                                  ",\"kernel\":%" PRId64 ",\"stride\":%" PRId64
                                  ",\"padding\":%" PRId64, e->in, e->out, e->kernel, e->stride,
                                  e->padding);
            break;
        case LPS_ARCH_MAXPOOL2D:
            o += (size_t)snprintf(b + o, cap - o, ",\"kernel\":%" PRId64 ",\"stride\":%" PRId64,
                                  e->kernel, e->stride);
            break;
        case LPS_ARCH_LINEAR:
            o += (size_t)snprintf(b + o, cap - o, ",\"in\":%" PRId64 ",\"out\":%" PRId64, e->in,
                                  e->out);
            break;
        default: break;
        }
        o += (size_t)snprintf(b + o, cap - o, "}");
    }
    o += (size_t)snprintf(b + o, cap - o, "]");
    *text = b;
    *len = o;
    return LPS_OK;
}
