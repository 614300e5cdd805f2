/* arch.c - the architecture list: parsed from JSON and checked against the
 * layer types' field tables, shapes chained through each type's flow, and
 * written back as canonical JSON. Nothing here names a layer type. */
#include "nn/nn_internal.h"
#include "io/json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ flows */

const char *lps_flow_shape(int rank, const int64_t *d, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < rank && o < n; i++) {
        if (d[i] == LPS_ARCH_UNKNOWN) o += (size_t)snprintf(buf + o, n - o, "%s?", i ? "x" : "");
        else o += (size_t)snprintf(buf + o, n - o, "%s%" PRId64, i ? "x" : "", d[i]);
    }
    if (o < n) snprintf(buf + o, n - o, ")");
    return buf;
}

void lps_fmt(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}

lps_status lps_flow_fail(const lps_flow *f, lps_status s, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lps_fail(s, "%s: %s", f->who, msg);
}

lps_status lps_flow_same(const lps_arch_entry *e, lps_flow *f)
{
    (void)e;
    (void)f;
    return LPS_OK;
}

lps_status lps_flow_planes(lps_flow *f)
{
    if (f->rank == 0) {
        f->rank = 3;
        f->d[0] = f->d[1] = f->d[2] = LPS_ARCH_UNKNOWN;
        return LPS_OK;
    }
    if (f->rank != 3)
        return lps_flow_fail(f, LPS_ESHAPE, "needs (channels x height x width) but %s gives %s%s",
                             f->from, FSH(f->rank, f->d), f->rank == 1 ? " features" : "");
    return LPS_OK;
}

lps_status lps_flow_window(const lps_arch_entry *e, lps_flow *f)
{
    int64_t k = FI(e, 0), s = FI(e, 1);
    lps_status st = lps_flow_planes(f);
    if (st) return st;
    for (int i = 1; i < 3; i++)
        if (f->d[i] != LPS_ARCH_UNKNOWN && f->d[i] < k)
            return lps_flow_fail(f, LPS_ESHAPE, "kernel %lld is larger than its input: %s gives %s",
                                 (long long)k, f->from, FSH(3, f->d));
    for (int i = 1; i < 3; i++)
        if (f->d[i] != LPS_ARCH_UNKNOWN) f->d[i] = (f->d[i] - k) / s + 1;
    return LPS_OK;
}

/* ------------------------------------------------------------ fields */

static int nfields(const lps_layer_type *t)
{
    int n = 0;
    while (t->fields && t->fields[n].key) n++;
    return n;
}

static int field_index(const lps_layer_type *t, const char *key, size_t len)
{
    for (int i = 0; i < nfields(t); i++)
        if (strlen(t->fields[i].key) == len && memcmp(t->fields[i].key, key, len) == 0) return i;
    return -1;
}

/* Defaults; required fields NaN until set. */
static void fill_defaults(lps_arch_entry *e, const lps_layer_type *t)
{
    memset(e, 0, sizeof *e);
    e->type = t;
    for (int i = 0; i < nfields(t); i++) {
        double d = t->fields[i].def;
        e->v[i] = d == LPS_REQUIRED ? NAN : d == LPS_DEF_FIRST ? NAN : d;
    }
}

void lps_arch_entry_finish(lps_arch_entry *e)
{
    for (int i = 0; i < nfields(e->type); i++)
        if (isnan(e->v[i]) && e->type->fields[i].def == LPS_DEF_FIRST) e->v[i] = e->v[0];
}

/* "a" or "an" before a type's name: "an avgpool2d". */
static const char *article(const char *name) { return name[0] && strchr("aeiou", name[0]) ? "an" : "a"; }

static const char *kind_word(lps_field_kind k)
{
    return k == LPS_FIELD_INT ? "an integer" : k == LPS_FIELD_REAL ? "a number" : "true or false";
}

/* Check v for field f of `who`; text is how it was written (may be NULL). */
static lps_status check_value(const char *who, const lps_field *f, double v, const char *text)
{
    /* a parsed list's entries say "arch: layer 2 (conv2d)", a constructor's "conv2d" */
    const char *arch = strncmp(who, "layer ", 6) == 0 || strncmp(who, "input", 5) == 0 ? "arch: " : "";
    char nb[40];
    if (!text) {
        snprintf(nb, sizeof nb, "%.17g", v);
        text = nb;
    }
    if (f->kind == LPS_FIELD_BOOL) {
        if (v != 0 && v != 1)
            return lps_fail(LPS_EFORMAT, "%s%s: \"%s\" must be true or false, got %s", arch, who,
                            f->key, text);
        return LPS_OK;
    }
    if (!isfinite(v) || (f->kind == LPS_FIELD_INT && v != floor(v)))
        return lps_fail(LPS_EFORMAT, "%s%s: \"%s\" must be %s, got %s", arch, who, f->key,
                        kind_word(f->kind), text);
    if (v < f->lo || v > f->hi) {
        if (f->kind == LPS_FIELD_INT)
            return lps_fail(LPS_EFORMAT, "%s%s: \"%s\" is %s, expected %.0f..%.0f", arch, who, f->key,
                            text, f->lo, f->hi);
        return lps_fail(LPS_EFORMAT, "%s%s: \"%s\" is %s, expected %g..%g", arch, who, f->key, text,
                        f->lo, f->hi);
    }
    return LPS_OK;
}

lps_status lps_arch_entry_init(lps_arch_entry *e, const char *type)
{
    const lps_layer_type *t = lps_layer_type_find(type);
    if (!t) return lps_fail(LPS_EINVAL, "arch: unknown layer type \"%.40s\"", type ? type : "(null)");
    fill_defaults(e, t);
    return LPS_OK;
}

lps_status lps_arch_entry_set(lps_arch_entry *e, const char *key, double v)
{
    int i = field_index(e->type, key, strlen(key));
    if (i < 0)
        return lps_fail(LPS_EINVAL, "arch: %s %s has no field \"%.40s\"", article(e->type->name),
                        e->type->name, key);
    lps_status s = check_value(e->type->name, &e->type->fields[i], v, NULL);
    if (!s) e->v[i] = v;
    return s;
}

double lps_arch_entry_get(const lps_arch_entry *e, const char *key)
{
    int i = field_index(e->type, key, strlen(key));
    return i < 0 ? NAN : e->v[i];
}

/* The keys of a type, for "a conv2d takes in, out, kernel, stride, padding". */
static void keys_text(const lps_layer_type *t, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < nfields(t) && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%s", i ? ", " : "", t->fields[i].key);
    if (t->branches && o < n) snprintf(buf + o, n - o, "%sbody, shortcut", o ? ", " : "");
    if (!buf[0]) snprintf(buf, n, "no other key");
}

/* ------------------------------------------------------------ parsing */

static const char *json_type_name(int t)
{
    static const char *names[] = {"null", "false", "true", "a number", "a string", "an array",
                                  "an object"};
    return names[t];
}

typedef struct {
    const char *text;
    size_t len;
    const lps_json *doc;
    size_t count; /* entries so far, branches included */
    int named;    /* entries named for messages (lps_arch_parse: only when a pass fails) */
} src;

static int key_is(const lps_json *doc, const lps_json_node *m, const char *k)
{
    size_t n = strlen(k);
    return m->key_len == n && memcmp(doc->strings + m->key, k, n) == 0;
}

/* A number's text as written, for "got 2.5". */
static const char *number_text(const src *s, const lps_json_node *v, char *buf, size_t cap)
{
    size_t i = v->pos, k = 0;
    while (i < s->len && k + 1 < cap && s->text[i] && strchr("+-.eE0123456789", s->text[i]))
        buf[k++] = s->text[i++];
    buf[k] = '\0';
    return buf;
}

static lps_status get_value(const src *s, const lps_json_node *v, const char *who, const lps_field *f,
                            double *out)
{
    char nb[64];
    if (f->kind == LPS_FIELD_BOOL) {
        if (v->type != LPS_JSON_TRUE && v->type != LPS_JSON_FALSE)
            return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" must be true or false, got %s", who,
                            f->key, v->type == LPS_JSON_NUMBER ? number_text(s, v, nb, sizeof nb)
                                                               : json_type_name(v->type));
        *out = v->type == LPS_JSON_TRUE;
        return LPS_OK;
    }
    if (v->type != LPS_JSON_NUMBER)
        return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" must be %s, got %s", who, f->key,
                        kind_word(f->kind), json_type_name(v->type));
    number_text(s, v, nb, sizeof nb);
    if (f->kind == LPS_FIELD_INT) {
        if (!v->is_int)
            return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" must be an integer, got %s", who, f->key, nb);
        if (!v->int_ok || (double)v->ival < f->lo || (double)v->ival > f->hi)
            return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" is %s, expected %.0f..%.0f", who, f->key,
                            nb, f->lo, f->hi);
        *out = (double)v->ival;
        return LPS_OK;
    }
    *out = strtod(nb, NULL);
    return check_value(who, f, *out, nb);
}

static lps_status parse_list(src *s, const lps_json_node *root, lps_arch **out, const char *prefix,
                             int depth, int top);

static lps_status parse_shape(const src *s, const lps_json_node *v, lps_arch *a)
{
    if (v->type != LPS_JSON_ARRAY || (v->count != 1 && v->count != 3))
        return lps_fail(LPS_EFORMAT, "arch: input: \"shape\" must be [features] or [channels, "
                        "height, width] (no batch size), got %s%s%u%s",
                        v->type == LPS_JSON_ARRAY ? "" : json_type_name(v->type),
                        v->type == LPS_JSON_ARRAY ? "an array of " : "",
                        v->type == LPS_JSON_ARRAY ? v->count : 0u,
                        v->type == LPS_JSON_ARRAY ? " sizes" : "");
    a->in_rank = (int)v->count;
    static const char *const names[2][3] = {{"features", "", ""}, {"channels", "height", "width"}};
    int i = 0;
    for (uint32_t c = v->first; c; c = s->doc->nodes[c].next, i++) {
        lps_field f = {names[a->in_rank == 3][i], LPS_FIELD_INT, 1,
                       a->in_rank == 1 ? (double)(INT32_MAX / 2) : (double)(1 << 20), 0, 0};
        double d;
        lps_status st = get_value(s, &s->doc->nodes[c], "input", &f, &d);
        if (st) return st;
        a->in_shape[i] = (int64_t)d;
    }
    return LPS_OK;
}

/* One entry: its type, then its fields and branches. who names it. */
static lps_status parse_entry(src *s, const lps_json_node *v, size_t k, const char *prefix,
                              const char *who_base, int depth, lps_arch_entry *e, int *is_input,
                              lps_arch *a)
{
    const lps_json *doc = s->doc;
    if (v->type != LPS_JSON_OBJECT)
        return lps_fail(LPS_EFORMAT, "arch: %sentry %zu of the list is %s, expected an object like "
                        "{\"type\":\"relu\"}", prefix, k, json_type_name(v->type));
    const lps_json_node *tn = NULL;
    for (uint32_t c = v->first; c; c = doc->nodes[c].next)
        if (key_is(doc, &doc->nodes[c], "type")) {
            if (tn) return lps_fail(LPS_EFORMAT, "arch: %sentry %zu has \"type\" twice", prefix, k);
            tn = &doc->nodes[c];
        }
    if (!tn) return lps_fail(LPS_EFORMAT, "arch: %sentry %zu has no \"type\"", prefix, k);
    if (tn->type != LPS_JSON_STRING)
        return lps_fail(LPS_EFORMAT, "arch: %sentry %zu: \"type\" is %s, expected a string", prefix,
                        k, json_type_name(tn->type));
    const char *tname = doc->strings + tn->str;
    *is_input = tn->str_len == 5 && strcmp(tname, "input") == 0;
    if (*is_input) {
        if (k != 1 || !a)
            return lps_fail(LPS_EFORMAT, "arch: %sentry %zu: an input entry may only come first",
                            prefix, k);
        int seen = 0;
        for (uint32_t c = v->first; c; c = doc->nodes[c].next) {
            const lps_json_node *m = &doc->nodes[c];
            if (m == tn) continue;
            if (!key_is(doc, m, "shape"))
                return lps_fail(LPS_EFORMAT, "arch: input: unknown key \"%.40s\" (an input takes shape)",
                                doc->strings + m->key);
            if (seen++) return lps_fail(LPS_EFORMAT, "arch: input: \"shape\" appears twice");
            lps_status st = parse_shape(s, m, a);
            if (st) return st;
        }
        if (!seen) return lps_fail(LPS_EFORMAT, "arch: input: \"shape\" is missing");
        return LPS_OK;
    }
    const lps_layer_type *t = tn->str_len == strlen(tname) ? lps_layer_type_find(tname) : NULL;
    if (!t) {
        char known[400] = "input";
        size_t o = strlen(known);
        for (int i = 0; lps_layer_type_at(i) && o < sizeof known; i++)
            o += (size_t)snprintf(known + o, sizeof known - o, ", %s", lps_layer_type_at(i)->name);
        return lps_fail(LPS_EFORMAT, "arch: %s: unknown type \"%.40s\" (known: %s)", who_base, tname,
                        known);
    }
    fill_defaults(e, t);
    char who[256] = "";
    if (s->named) lps_fmt(who, sizeof who, "%s (%s)", who_base, t->name);
    int seen[LPS_ARCH_FIELDS] = {0}, seen_br[2] = {0};
    for (uint32_t c = v->first; c; c = doc->nodes[c].next) {
        const lps_json_node *m = &doc->nodes[c];
        if (m == tn) continue;
        int br = !t->branches ? -1 : key_is(doc, m, "body") ? 0 : key_is(doc, m, "shortcut") ? 1 : -1;
        if (br >= 0) {
            if (seen_br[br]++)
                return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" appears twice", who, br ? "shortcut" : "body");
            if (depth >= LPS_ARCH_MAX_DEPTH)
                return lps_fail(LPS_EFORMAT, "arch: %s: branches nest deeper than %d", who,
                                LPS_ARCH_MAX_DEPTH);
            char sub[256] = "";
            if (s->named) lps_fmt(sub, sizeof sub, "%s %s ", who, br ? "shortcut" : "body");
            lps_status st = parse_list(s, m, br ? &e->shortcut : &e->body, sub, depth + 1, 0);
            if (st) return st;
            continue;
        }
        int j = field_index(t, doc->strings + m->key, m->key_len);
        if (j < 0) {
            char keys[200];
            keys_text(t, keys, sizeof keys);
            return lps_fail(LPS_EFORMAT, "arch: %s: unknown key \"%.40s\" (%s %s takes %s)", who,
                            doc->strings + m->key, article(t->name), t->name, keys);
        }
        if (seen[j]++) return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" appears twice", who, t->fields[j].key);
        lps_status st = get_value(s, m, who, &t->fields[j], &e->v[j]);
        if (st) return st;
    }
    for (int j = 0; j < nfields(t); j++)
        if (!seen[j] && t->fields[j].def == LPS_REQUIRED)
            return lps_fail(LPS_EFORMAT, "arch: %s: \"%s\" is missing", who, t->fields[j].key);
    if (t->branches && !seen_br[0])
        return lps_fail(LPS_EFORMAT, "arch: %s: \"body\" is missing", who);
    /* an absent shortcut is the identity, as "shortcut":[] is: the same
     * empty list, so that a parsed arch and its canonical JSON agree */
    if (t->branches && !seen_br[1] && !(e->shortcut = calloc(1, sizeof *e->shortcut)))
        return lps_fail(LPS_ENOMEM, "arch: %s: cannot allocate its shortcut", who);
    lps_arch_entry_finish(e);
    return LPS_OK;
}

/* A list of entries; `prefix` names a branch in messages ("layer 3 body ").
 * top: the outer list (may start with an input entry). */
static lps_status parse_list(src *s, const lps_json_node *root, lps_arch **out, const char *prefix,
                             int depth, int top)
{
    *out = NULL;
    if (root->type != LPS_JSON_ARRAY)
        return lps_fail(LPS_EFORMAT, "arch: %sexpected a JSON array of layers, got %s",
                        top ? "" : prefix, json_type_name(root->type));
    if (root->count == 0 && top) return lps_fail(LPS_EFORMAT, "arch: the list has no layers");
    lps_arch *a = calloc(1, sizeof *a);
    if (a && root->count) a->entries = calloc(root->count, sizeof *a->entries);
    if (!a || (root->count && !a->entries)) {
        free(a);
        return lps_fail(LPS_ENOMEM, "arch: cannot allocate %u entries", root->count);
    }
    lps_status st = LPS_OK;
    size_t k = 0;
    int have_input = 0;
    for (uint32_t c = root->first; c && !st; c = s->doc->nodes[c].next) {
        k++;
        int layer = (int)k - have_input;
        char who[256] = "";
        if (s->named) lps_fmt(who, sizeof who, "%slayer %d", prefix, layer);
        int is_input = 0;
        st = parse_entry(s, &s->doc->nodes[c], k, prefix, who, depth, &a->entries[a->n], &is_input,
                         top ? a : NULL);
        if (is_input) {
            have_input = !st;
            continue;
        }
        a->n++; /* on failure too: lps_arch_free frees what the entry holds */
        if (!st && ++s->count > LPS_ARCH_MAX_LAYERS)
            st = lps_fail(LPS_EFORMAT, "arch: more than %d layers", LPS_ARCH_MAX_LAYERS);
    }
    if (!st && top && have_input && a->n == 0)
        st = lps_fail(LPS_EFORMAT, "arch: the list has an input entry but no layers");
    if (st) {
        lps_arch_free(a);
        return st;
    }
    *out = a;
    return LPS_OK;
}

void lps_arch_free(lps_arch *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->n; i++) {
        lps_arch_free(a->entries[i].body);
        lps_arch_free(a->entries[i].shortcut);
    }
    free(a->entries);
    free(a);
}

/* Shapes through a list: entry i is named f->who followed by i (f->who ends in
 * "layer "). */
lps_status lps_arch_flow(const lps_arch *a, lps_flow *f)
{
    char prefix[256];
    if (!f->quiet) lps_fmt(prefix, sizeof prefix, "%s", f->who);
    for (size_t i = 0; a && i < a->n; i++) {
        lps_arch_entry *e = &a->entries[i];
        if (!f->quiet) lps_fmt(f->who, sizeof f->who, "%s%zu (%s)", prefix, i + 1, e->type->name);
        lps_status s = e->type->flow(e, f);
        if (s) return s;
        e->rank = f->rank;
        memcpy(e->shape, f->d, sizeof e->shape);
        if (!f->quiet) lps_fmt(f->from, sizeof f->from, "%s%zu (%s)", prefix, i + 1, e->type->name);
    }
    return LPS_OK;
}

static lps_status flow_top(lps_arch *a, int rank, const int64_t *shape)
{
    /* quiet first: naming every entry costs more than checking it */
    lps_status s = LPS_OK;
    for (int quiet = 1; quiet >= 0; quiet--) {
        lps_flow f = {0};
        f.rank = rank;
        for (int i = 0; i < rank; i++) f.d[i] = shape[i];
        f.mult = 1;
        f.quiet = quiet;
        if (!quiet) {
            lps_fmt(f.from, sizeof f.from, "the input");
            lps_fmt(f.who, sizeof f.who, "layer ");
        }
        if (!(s = lps_arch_flow(a, &f))) return LPS_OK;
    }
    char msg[600];
    snprintf(msg, sizeof msg, "%s", lps_errmsg());
    return lps_fail(s, "arch: %s", msg);
}

lps_status lps_arch_reflow(lps_arch *a) { return flow_top(a, a->in_rank, a->in_shape); }

lps_status lps_arch_check_input(lps_arch *a, int rank, const int64_t *shape)
{
    if (rank < 1 || rank > 3) return lps_fail(LPS_ESHAPE, "arch: an input has 1 to 3 sizes, got %d", rank);
    return flow_top(a, rank, shape);
}

lps_status lps_arch_parse(lps_arch **out, const char *text, size_t len)
{
    *out = NULL;
    lps_json *doc;
    lps_status s = lps_json_parse(&doc, text, len, "arch");
    if (s) return s;
    /* Entries are named for messages only in a second pass, after the
     * first failed: formatting the names cost more than the parse. The
     * passes read the same text the same way and fail at the same place. */
    src sr = {text, len, doc, 0, 0};
    lps_arch *a = NULL;
    s = parse_list(&sr, &doc->nodes[0], &a, "", 0, 1);
    if (s) {
        sr.count = 0;
        sr.named = 1;
        s = parse_list(&sr, &doc->nodes[0], &a, "", 0, 1);
    }
    lps_json_free(doc);
    if (!s) s = flow_top(a, a->in_rank, a->in_shape);
    if (s) {
        lps_arch_free(a);
        return s;
    }
    *out = a;
    return LPS_OK;
}

/* ------------------------------------------------------------ writing */

typedef struct {
    char *b;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *s, const char *fmt, ...)
{
    if (s->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(s->b + s->n, s->cap - s->n, fmt, ap);
        va_end(ap);
        if (k < 0) { s->oom = 1; return; }
        if ((size_t)k < s->cap - s->n) {
            s->n += (size_t)k;
            return;
        }
        size_t cap = (s->cap + (size_t)k + 1) * 2;
        char *nb = realloc(s->b, cap);
        if (!nb) { s->oom = 1; return; }
        s->b = nb;
        s->cap = cap;
    }
}

/* The shortest text that reads back as v. */
static void real_text(char *buf, size_t n, double v)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
}

static void put_real(sbuf *s, double v)
{
    char buf[40];
    real_text(buf, sizeof buf, v);
    put(s, "%s", buf);
}

const char *lps_py_float(char *buf, size_t n, double v)
{
    real_text(buf, n, v);
    if (!strpbrk(buf, ".eni")) { /* integral: Python writes 1.0 */
        size_t k = strlen(buf);
        if (k + 2 < n) memcpy(buf + k, ".0", 3);
    }
    return buf;
}

static void put_list(sbuf *s, const lps_arch *a, int top);

static void put_entry(sbuf *s, const lps_arch_entry *e)
{
    put(s, "{\"type\":\"%s\"", e->type->name);
    for (int i = 0; i < nfields(e->type); i++) {
        const lps_field *f = &e->type->fields[i];
        if (f->quiet && e->v[i] == f->def) continue;
        put(s, ",\"%s\":", f->key);
        if (f->kind == LPS_FIELD_BOOL) put(s, "%s", e->v[i] != 0 ? "true" : "false");
        else if (f->kind == LPS_FIELD_INT) put(s, "%" PRId64, FI(e, i));
        else put_real(s, e->v[i]);
    }
    if (e->type->branches) {
        put(s, ",\"body\":");
        put_list(s, e->body, 0);
        put(s, ",\"shortcut\":");
        put_list(s, e->shortcut, 0);
    }
    put(s, "}");
}

static void put_list(sbuf *s, const lps_arch *a, int top)
{
    put(s, "[");
    int first = 1;
    if (top && a && a->in_rank) {
        put(s, "{\"type\":\"input\",\"shape\":[");
        for (int d = 0; d < a->in_rank; d++) put(s, "%s%" PRId64, d ? "," : "", a->in_shape[d]);
        put(s, "]}");
        first = 0;
    }
    for (size_t i = 0; a && i < a->n; i++, first = 0) {
        if (!first) put(s, ",");
        put_entry(s, &a->entries[i]);
    }
    put(s, "]");
}

lps_status lps_arch_to_json(const lps_arch *a, char **text, size_t *len)
{
    *text = NULL;
    sbuf s = {malloc(256), 0, 256, 0};
    if (!s.b) return lps_fail(LPS_ENOMEM, "arch: cannot allocate its JSON text");
    s.b[0] = '\0';
    put_list(&s, a, 1);
    if (s.oom) {
        free(s.b);
        return lps_fail(LPS_ENOMEM, "arch: cannot allocate its JSON text");
    }
    *text = s.b;
    *len = s.n;
    return LPS_OK;
}

/* ------------------------------------------------------------ weight chains */

/* The registry's types with a flag, "conv2d, linear", into buf. */
static const char *types_with(unsigned flag, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; lps_layer_type_at(i) && o < n; i++)
        if (lps_layer_type_at(i)->flags & flag)
            o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? ", " : "", lps_layer_type_at(i)->name);
    return buf;
}

lps_status lps_arch_weight_layers(const lps_arch *a, int *idx, int max, int *n, const char *op)
{
    char weighted[200], channelwise[400];
    *n = 0;
    for (size_t i = 0; a && i < a->n; i++) {
        const lps_layer_type *t = a->entries[i].type;
        if ((t->flags & LPS_LT_WEIGHTED) && lps_arch_entry_get(&a->entries[i], "bias") == 0) {
            return lps_fail(LPS_EINVAL, "%s: layer %zu (%s) has no bias: the weight-space methods read a "
                            "weight and a bias per weight layer", op, i + 1, t->name);
        } else if (t->flags & LPS_LT_WEIGHTED) {
            if (*n < max) idx[*n] = (int)i;
            (*n)++;
        } else if (!(t->flags & LPS_LT_CHANNELWISE) || *n == 0 || i + 1 == a->n) {
            return lps_fail(LPS_EINVAL, "%s: layer %zu (%s) is not read by the weight-space methods: they "
                            "take weight layers (%s) with layers that act on every channel alike and "
                            "commute with a positive scale (%s) between them%s", op, i + 1, t->name,
                            types_with(LPS_LT_WEIGHTED, weighted, sizeof weighted),
                            types_with(LPS_LT_CHANNELWISE, channelwise, sizeof channelwise),
                            *n == 0 ? ", starting with a weight layer"
                                    : i + 1 == a->n ? " and ending with one" : "");
        }
    }
    return LPS_OK;
}
