/* json.h - a small strict JSON parser (RFC 8259) for file headers; internal.
 *
 * The whole document becomes an array of nodes (node 0 is the root) and one
 * buffer of decoded, NUL-terminated strings. Parsing is iterative with an
 * explicit stack, so hostile nesting cannot overflow the C stack. */
#ifndef LPS_JSON_H
#define LPS_JSON_H

#include "lualps.h"

#define LPS_JSON_MAX_DEPTH 64
/* Node cap: bounds memory (about 32 bytes a node) for a hostile document;
 * 4M values is far beyond any real safetensors header. */
#define LPS_JSON_MAX_NODES (1u << 22)

typedef enum {
    LPS_JSON_NULL, LPS_JSON_FALSE, LPS_JSON_TRUE, LPS_JSON_NUMBER,
    LPS_JSON_STRING, LPS_JSON_ARRAY, LPS_JSON_OBJECT
} lps_json_type;

typedef struct lps_json_node {
    uint8_t type;      /* lps_json_type */
    uint8_t is_int;    /* number written as an integer (no fraction, no exponent) */
    uint8_t int_ok;    /* ... and it fits in int64_t (value in ival) */
    uint32_t next;     /* next sibling; 0 = none (the root is nobody's sibling) */
    uint32_t first;    /* first child of an array or object; 0 = none */
    uint32_t count;    /* number of children */
    uint32_t pos;      /* byte offset in the text, for messages */
    uint32_t key;      /* object members: offset of the key in strings */
    uint32_t key_len;
    uint32_t str;      /* strings: offset of the value in strings */
    uint32_t str_len;
    int64_t ival;
} lps_json_node;

typedef struct lps_json {
    lps_json_node *nodes;
    uint32_t n, cap;
    char *strings; /* decoded strings, each NUL-terminated (may contain NUL: use lengths) */
} lps_json;

/* Parse text[0..len) into *out. `what` names the document in error
 * messages; a syntax error is LPS_EFORMAT naming the byte offset. */
lps_status lps_json_parse(lps_json **out, const char *text, size_t len, const char *what);
void lps_json_free(lps_json *doc);

/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int lps_utf8_valid(const char *s, size_t n);

#endif
