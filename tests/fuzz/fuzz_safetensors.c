/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader (and the
 * JSON parser under it) and the architecture parser (csrc/nn/arch.c), which
 * reads the "lualps.arch" metadata of each accepted file, and any input that
 * is not a safetensors file but starts with '['; an input starting with '{'
 * also goes to lps_json_members (a record's fields read as text).
 * `make fuzz-safetensors` builds it with ASan+UBSan.
 *
 * Beyond "no crash, no leak", every input the reader accepts must satisfy
 * the format's invariants, and its float tensors must survive a write and a
 * second read bit for bit; every arch accepted must have its fields in range
 * and its canonical JSON must parse back to the same arch. Any violation
 * aborts, which libFuzzer reports. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "lualps.h"

#define CHECK(c)                                                             \
    do {                                                                     \
        if (!(c)) {                                                          \
            fprintf(stderr, "invariant failed: %s (line %d)\n", #c, __LINE__); \
            abort();                                                         \
        }                                                                    \
    } while (0)

static int readable(const lps_safetensors *st, size_t i)
{
    /* Floats of 16 bits and more and every integer type are read into float32;
     * complex and the 8-, 6- and 4-bit float formats are refused. */
    lps_st_dtype d = st->entries[i].dtype;
    return d <= LPS_ST_F64 && st->entries[i].rank <= LPS_MAX_DIMS;
}

/* Same entries, branches included: types, field values, shapes. */
static int same_list(const lps_arch *a, const lps_arch *b)
{
    if (!a || !b) return !a == !b && (!a || a->n == b->n);
    if (a->n != b->n) return 0;
    for (size_t i = 0; i < a->n; i++) {
        const lps_arch_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->type != y->type || memcmp(x->v, y->v, sizeof x->v) != 0 || x->rank != y->rank ||
            memcmp(x->shape, y->shape, sizeof x->shape) != 0 || !same_list(x->body, y->body) ||
            !same_list(x->shortcut, y->shortcut))
            return 0;
    }
    return 1;
}

/* Every entry's fields in their ranges and shapes well formed; known when
 * the input is (known). Returns the entries counted, branches included. */
static size_t check_list(const lps_arch *a, int known)
{
    size_t n = 0;
    for (size_t i = 0; a && i < a->n; i++, n++) {
        const lps_arch_entry *e = &a->entries[i];
        const lps_field *f = lps_layer_type_fields(e->type);
        for (int k = 0; f && f[k].key; k++) {
            if (f[k].kind == LPS_FIELD_BOOL) CHECK(e->v[k] == 0 || e->v[k] == 1);
            else CHECK(e->v[k] >= f[k].lo && e->v[k] <= f[k].hi);
        }
        CHECK(e->rank >= 0 && e->rank <= 3);
        for (int d = 0; d < e->rank; d++) CHECK(e->shape[d] >= 1 || e->shape[d] == LPS_ARCH_UNKNOWN); /* no empty size */
        if (known) for (int d = 0; d < e->rank; d++) CHECK(e->shape[d] >= 1);
        CHECK(lps_layer_type_branches(e->type) == (e->body != NULL));
        n += check_list(e->body, known) + check_list(e->shortcut, known);
    }
    return n;
}

static void check_arch(const char *text, size_t len)
{
    lps_arch *a;
    if (lps_arch_parse(&a, text, len)) {
        CHECK(strncmp(lps_errmsg(), "arch: ", 6) == 0); /* every refusal says why */
        return;
    }
    CHECK(a->n >= 1);
    CHECK(check_list(a, a->in_rank > 0) <= LPS_ARCH_MAX_LAYERS);
    char *json, *json2;
    size_t jl, jl2;
    CHECK(lps_arch_to_json(a, &json, &jl) == LPS_OK && strlen(json) == jl);
    lps_arch *b;
    CHECK(lps_arch_parse(&b, json, jl) == LPS_OK);
    CHECK(b->in_rank == a->in_rank && same_list(a, b));
    CHECK(lps_arch_to_json(b, &json2, &jl2) == LPS_OK && jl2 == jl && memcmp(json, json2, jl) == 0);
    free(json);
    free(json2);
    lps_arch_free(b);
    lps_arch_free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A member's text must lie inside the object and be exactly one value:
 * wrapped as {"v":TEXT} it parses, and reads back the same length. */
static void check_members(const char *text, size_t len)
{
    static const char *const keys[] = {"arch", "family", "id", "v"};
    size_t off[4], n[4];
    if (lps_json_members(text, len, 4, keys, off, n) != LPS_OK) {
        CHECK(lps_errmsg()[0] != '\0');
        return;
    }
    for (int k = 0; k < 4; k++) {
        if (!n[k]) continue;
        CHECK(off[k] < len && n[k] <= len - off[k]);
        char *w = malloc(n[k] + 6);
        CHECK(w != NULL);
        memcpy(w, "{\"v\":", 5);
        memcpy(w + 5, text + off[k], n[k]);
        w[n[k] + 5] = '}';
        size_t o2, n2;
        CHECK(lps_json_members(w, n[k] + 6, 1, &keys[3], &o2, &n2) == LPS_OK);
        CHECK(o2 == 5 && n2 == n[k]);
        free(w);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lps_safetensors *st = lps_safetensors_parse(data, size);
    if (!st) {
        CHECK(lps_errmsg()[0] != '\0'); /* every refusal says why */
        if (size > 0 && data[0] == '[') check_arch((const char *)data, size);
        if (size > 0 && data[0] == '{') check_members((const char *)data, size);
        return 0;
    }
    /* The accepted file: ranges inside the buffer, sizes consistent. */
    CHECK(8 + st->header_len + st->data_len == size);
    uint64_t covered = 0;
    for (size_t i = 0; i < st->n; i++) {
        const lps_st_entry *e = &st->entries[i];
        CHECK(e->begin <= e->end && e->end <= st->data_len);
        CHECK(lps_utf8_valid(e->name, strlen(e->name)));
        CHECK(strcmp(e->name, "__metadata__") != 0);
        CHECK(lps_safetensors_find(st, e->name) == (int64_t)i); /* names unique */
        covered += e->end - e->begin;
    }
    CHECK(covered == st->data_len); /* no gap, no overlap */
    for (size_t i = 0; i < st->n_meta; i++) {
        CHECK(lps_utf8_valid(st->meta_values[i], strlen(st->meta_values[i])));
        if (strcmp(st->meta_keys[i], "lualps.arch") == 0)
            check_arch(st->meta_values[i], strlen(st->meta_values[i]));
    }

    /* Convert what lualps reads, write it back as F32 with the metadata, and
     * read that again: the same floats and metadata must come out. */
    lps_tensor **t = calloc(st->n + 1, sizeof *t);
    const char **names = calloc(st->n + 1, sizeof *names);
    size_t n = 0;
    CHECK(t && names);
    for (size_t i = 0; i < st->n; i++) {
        if (!readable(st, i)) {
            CHECK(lps_safetensors_tensor(st, i) == NULL);
            continue;
        }
        lps_tensor *x = lps_safetensors_tensor(st, i);
        if (!x) continue; /* only an element count past 2^40 may fail */
        names[n] = st->entries[i].name;
        t[n++] = x;
    }
    uint8_t *buf;
    size_t len;
    /* Names and metadata of an accepted file are valid UTF-8 and unique, so
     * writing them back must succeed. */
    CHECK(lps_safetensors_encode(names, (const lps_tensor *const *)t, n, st->meta_keys,
                                 st->meta_values, st->n_meta, &buf, &len) == LPS_OK);
    {
        lps_safetensors *again = lps_safetensors_parse(buf, len);
        CHECK(again != NULL);
        CHECK(again->n == n && again->n_meta == st->n_meta && again->header_len % 8 == 0);
        for (size_t k = 0; k < n; k++) {
            int64_t j = lps_safetensors_find(again, names[k]);
            CHECK(j >= 0 && again->entries[j].dtype == LPS_ST_F32);
            lps_tensor *y = lps_safetensors_tensor(again, (size_t)j);
            CHECK(y && y->numel == t[k]->numel && y->ndim == t[k]->ndim);
            CHECK(memcmp(y->data, t[k]->data, (size_t)y->numel * sizeof(float)) == 0);
            lps_tensor_free(y);
        }
        for (size_t k = 0; k < st->n_meta; k++) {
            int found = 0;
            for (size_t q = 0; q < again->n_meta; q++)
                if (strcmp(again->meta_keys[q], st->meta_keys[k]) == 0) {
                    CHECK(strcmp(again->meta_values[q], st->meta_values[k]) == 0);
                    found = 1;
                }
            CHECK(found);
        }
        lps_safetensors_free(again);
        free(buf);
    }
    for (size_t k = 0; k < n; k++) lps_tensor_free(t[k]);
    free(t);
    free(names);
    lps_safetensors_free(st);
    return 0;
}
