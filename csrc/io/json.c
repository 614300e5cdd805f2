/* json.c - a small strict JSON parser (see json.h). */
#include "io/json.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *s;
    size_t n, i;
    lps_json *doc;
    size_t slen; /* bytes used in doc->strings */
    const char *what;
} parser;

static lps_status bad(parser *p, const char *msg)
{
    return lps_fail(LPS_EFORMAT, "%s: invalid JSON at byte %zu: %s", p->what, p->i, msg);
}

static void skip_ws(parser *p)
{
    while (p->i < p->n) {
        unsigned char c = p->s[p->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->i++;
    }
}

/* Length of the UTF-8 sequence at s (at most n bytes), 0 if malformed. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; } /* no UTF-16 surrogates */
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; } /* nothing above U+10FFFF */
    else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if (s[k] < 0x80 || s[k] > 0xBF) return 0;
    return len;
}

int lps_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(u + i, n - i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

static int hex4(const unsigned char *s, size_t avail, unsigned *out)
{
    if (avail < 4) return 0;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = s[k], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        v = v * 16 + d;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode the string starting at the opening quote into doc->strings. The
 * decoded form is never longer than the quoted text, so the buffer sized
 * len + 1 up front always has room (the closing quote pays for the NUL). */
static lps_status parse_string(parser *p, uint32_t *off, uint32_t *len)
{
    char *out = p->doc->strings + p->slen;
    size_t o = 0;
    p->i++; /* opening quote */
    for (;;) {
        if (p->i >= p->n) return bad(p, "unterminated string");
        unsigned char c = p->s[p->i];
        if (c == '"') {
            p->i++;
            break;
        }
        if (c == '\\') {
            if (p->i + 1 >= p->n) return bad(p, "unterminated escape");
            unsigned char e = p->s[p->i + 1];
            p->i += 2;
            switch (e) {
            case '"': out[o++] = '"'; break;
            case '\\': out[o++] = '\\'; break;
            case '/': out[o++] = '/'; break;
            case 'b': out[o++] = '\b'; break;
            case 'f': out[o++] = '\f'; break;
            case 'n': out[o++] = '\n'; break;
            case 'r': out[o++] = '\r'; break;
            case 't': out[o++] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (!hex4(p->s + p->i, p->n - p->i, &cp)) return bad(p, "bad \\u escape");
                p->i += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return bad(p, "unpaired UTF-16 surrogate in \\u escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p->i + 1 >= p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' ||
                        !hex4(p->s + p->i + 2, p->n - p->i - 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return bad(p, "unpaired UTF-16 surrogate in \\u escape");
                    p->i += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                o += put_utf8(out + o, cp);
                break;
            }
            default:
                p->i -= 1;
                return bad(p, "invalid escape in a string");
            }
            continue;
        }
        if (c < 0x20) return bad(p, "unescaped control character in a string");
        size_t k = utf8_seq(p->s + p->i, p->n - p->i);
        if (!k) return bad(p, "invalid UTF-8 in a string");
        memcpy(out + o, p->s + p->i, k);
        o += k;
        p->i += k;
    }
    out[o] = '\0';
    *off = (uint32_t)p->slen;
    *len = (uint32_t)o;
    p->slen += o + 1;
    return LPS_OK;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static lps_status parse_number(parser *p, lps_json_node *nd)
{
    size_t start = p->i;
    int neg = 0;
    if (p->s[p->i] == '-') {
        neg = 1;
        p->i++;
    }
    if (p->i >= p->n || !is_digit(p->s[p->i])) return bad(p, "invalid number");
    uint64_t mag = 0;
    int overflow = 0;
    if (p->s[p->i] == '0')
        p->i++;
    else
        while (p->i < p->n && is_digit(p->s[p->i])) {
            unsigned d = p->s[p->i++] - '0';
            if (mag > (UINT64_MAX - d) / 10) overflow = 1;
            else mag = mag * 10 + d;
        }
    int is_int = 1;
    if (p->i < p->n && p->s[p->i] == '.') {
        is_int = 0;
        p->i++;
        if (p->i >= p->n || !is_digit(p->s[p->i])) return bad(p, "digit expected after '.'");
        while (p->i < p->n && is_digit(p->s[p->i])) p->i++;
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        is_int = 0;
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
        if (p->i >= p->n || !is_digit(p->s[p->i])) return bad(p, "digit expected in exponent");
        while (p->i < p->n && is_digit(p->s[p->i])) p->i++;
    }
    nd->type = LPS_JSON_NUMBER;
    nd->is_int = (uint8_t)is_int;
    nd->pos = (uint32_t)start;
    if (is_int && !overflow) {
        if (!neg && mag <= (uint64_t)INT64_MAX) {
            nd->int_ok = 1;
            nd->ival = (int64_t)mag;
        } else if (neg && mag <= (uint64_t)INT64_MAX + 1) {
            nd->int_ok = 1;
            nd->ival = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
        }
    }
    return LPS_OK;
}

static lps_status literal(parser *p, const char *word, lps_json_type t, lps_json_node *nd)
{
    size_t k = strlen(word);
    if (p->n - p->i < k || memcmp(p->s + p->i, word, k) != 0) return bad(p, "unexpected character");
    p->i += k;
    nd->type = (uint8_t)t;
    return LPS_OK;
}

static lps_status new_node(parser *p, uint32_t *idx)
{
    lps_json *d = p->doc;
    if (d->n == d->cap) {
        if (d->cap >= LPS_JSON_MAX_NODES)
            return lps_fail(LPS_EFORMAT, "%s: more than %u JSON values", p->what,
                            (unsigned)LPS_JSON_MAX_NODES);
        uint32_t cap = d->cap ? d->cap * 2 : 64;
        lps_json_node *nn = realloc(d->nodes, (size_t)cap * sizeof *nn);
        if (!nn) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %u JSON nodes", p->what, cap);
        d->nodes = nn;
        d->cap = cap;
    }
    *idx = d->n++;
    memset(&d->nodes[*idx], 0, sizeof d->nodes[*idx]);
    d->nodes[*idx].pos = (uint32_t)p->i;
    return LPS_OK;
}

/* Expect `"key" :` inside an object; leaves the key in off and len. */
static lps_status member_key(parser *p, uint32_t *off, uint32_t *len)
{
    skip_ws(p);
    if (p->i >= p->n || p->s[p->i] != '"') return bad(p, "expected a string key");
    lps_status s = parse_string(p, off, len);
    if (s) return s;
    skip_ws(p);
    if (p->i >= p->n || p->s[p->i] != ':') return bad(p, "expected ':' after an object key");
    p->i++;
    return LPS_OK;
}

void lps_json_free(lps_json *doc)
{
    if (!doc) return;
    free(doc->nodes);
    free(doc->strings);
    free(doc);
}

lps_status lps_json_parse(lps_json **out, const char *text, size_t len, const char *what)
{
    *out = NULL;
    if (len >= UINT32_MAX)
        return lps_fail(LPS_EFORMAT, "%s: %zu bytes is too long for JSON", what, len);
    lps_json *doc = calloc(1, sizeof *doc);
    if (!doc || !(doc->strings = malloc(len + 1))) {
        free(doc);
        return lps_fail(LPS_ENOMEM, "%s: cannot allocate %zu bytes for JSON strings", what, len + 1);
    }
    parser p = {(const unsigned char *)text, len, 0, doc, 0, what};
    struct { uint32_t node, last; } stack[LPS_JSON_MAX_DEPTH];
    int depth = 0;
    uint32_t key = 0, key_len = 0; /* pending member key */
    lps_status s = LPS_EFORMAT;

    for (;;) {
        /* A value. */
        skip_ws(&p);
        if (p.i >= p.n) {
            s = bad(&p, depth ? "unexpected end of text, expected a value" : "empty document");
            goto fail;
        }
        uint32_t v = 0;
        if ((s = new_node(&p, &v))) goto fail;
        if (depth > 0) {
            lps_json_node *parent = &doc->nodes[stack[depth - 1].node];
            if (parent->type == LPS_JSON_OBJECT) {
                doc->nodes[v].key = key;
                doc->nodes[v].key_len = key_len;
            }
            if (stack[depth - 1].last) doc->nodes[stack[depth - 1].last].next = v;
            else parent->first = v;
            stack[depth - 1].last = v;
            parent->count++;
        }
        lps_json_node *nd = &doc->nodes[v];
        unsigned char c = p.s[p.i];
        if (c == '{' || c == '[') {
            if (depth == LPS_JSON_MAX_DEPTH) {
                s = bad(&p, "nested deeper than 64 levels");
                goto fail;
            }
            nd->type = c == '{' ? LPS_JSON_OBJECT : LPS_JSON_ARRAY;
            p.i++;
            stack[depth].node = v;
            stack[depth].last = 0;
            depth++;
            skip_ws(&p);
            if (p.i < p.n && p.s[p.i] == (c == '{' ? '}' : ']')) {
                p.i++;
                depth--;
            } else {
                if (c == '{' && (s = member_key(&p, &key, &key_len))) goto fail;
                continue; /* the first element */
            }
        } else if (c == '"') {
            uint32_t off, sl;
            if ((s = parse_string(&p, &off, &sl))) goto fail;
            nd = &doc->nodes[v];
            nd->type = LPS_JSON_STRING;
            nd->str = off;
            nd->str_len = sl;
        } else if (c == '-' || is_digit(c)) {
            if ((s = parse_number(&p, nd))) goto fail;
        } else if (c == 't') {
            if ((s = literal(&p, "true", LPS_JSON_TRUE, nd))) goto fail;
        } else if (c == 'f') {
            if ((s = literal(&p, "false", LPS_JSON_FALSE, nd))) goto fail;
        } else if (c == 'n') {
            if ((s = literal(&p, "null", LPS_JSON_NULL, nd))) goto fail;
        } else {
            s = bad(&p, "unexpected character");
            goto fail;
        }

        /* After a value: close containers or move to the next element. */
        for (;;) {
            skip_ws(&p);
            if (depth == 0) {
                if (p.i != p.n) {
                    s = bad(&p, "unexpected text after the top-level value");
                    goto fail;
                }
                *out = doc;
                return LPS_OK;
            }
            int obj = doc->nodes[stack[depth - 1].node].type == LPS_JSON_OBJECT;
            if (p.i >= p.n) {
                s = bad(&p, obj ? "unexpected end of text inside an object" :
                              "unexpected end of text inside an array");
                goto fail;
            }
            c = p.s[p.i];
            if (c == ',') {
                p.i++;
                if (obj && (s = member_key(&p, &key, &key_len))) goto fail;
                break;
            }
            if (c == (obj ? '}' : ']')) {
                p.i++;
                depth--;
                continue;
            }
            s = bad(&p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            goto fail;
        }
    }
fail:
    lps_json_free(doc);
    return s;
}

/* The end of the well-formed value starting at text[pos]: strings skipped
 * whole (their escapes too), brackets counted. */
static size_t value_end(const char *t, size_t len, size_t pos)
{
    size_t i = pos;
    int depth = 0;
    do {
        char c = t[i];
        if (c == '"') {
            for (i++; i < len && t[i] != '"'; i++)
                if (t[i] == '\\') i++;
            i++;
        } else if (c == '[' || c == '{') {
            depth++;
            i++;
        } else if (c == ']' || c == '}') {
            depth--;
            i++;
        } else if (depth == 0) { /* a number or literal */
            while (i < len && !strchr(",]} \t\r\n", t[i])) i++;
        } else {
            i++;
        }
    } while (depth > 0 && i < len);
    return i;
}

lps_status lps_json_members(const char *text, size_t len, size_t n, const char *const *keys, size_t *off,
                            size_t *mlen)
{
    lps_json *doc;
    lps_status s = lps_json_parse(&doc, text, len, "JSON object");
    if (s) return s;
    const lps_json_node *root = &doc->nodes[0];
    if (root->type != LPS_JSON_OBJECT) {
        lps_json_free(doc);
        return lps_fail(LPS_EFORMAT, "JSON object: the text is not an object");
    }
    for (size_t k = 0; k < n; k++) {
        size_t kl = strlen(keys[k]);
        off[k] = mlen[k] = 0;
        for (uint32_t c = root->first; c; c = doc->nodes[c].next) {
            const lps_json_node *m = &doc->nodes[c];
            if (m->key_len == kl && !memcmp(doc->strings + m->key, keys[k], kl)) { /* the last of duplicates */
                off[k] = m->pos;
                mlen[k] = value_end(text, len, m->pos) - m->pos;
            }
        }
    }
    lps_json_free(doc);
    return LPS_OK;
}
