/* arch.h - the architecture list of a layer stack, as carried in the
 * "lualps.arch" metadata of a safetensors file (a checkpoint holds weights,
 * not strides, padding or pooling):
 *
 *   [{"type":"input","shape":[1,28,28]},           optional, first only
 *    {"type":"conv2d","in":1,"out":8,"kernel":5,"stride":2,"padding":2},
 *    {"type":"relu"},{"type":"maxpool2d","kernel":2},{"type":"flatten"},
 *    {"type":"linear","in":392,"out":4}]
 *
 * Layer i (1-based, the input entry not counted) is child i-1 of a PyTorch
 * nn.Sequential. Parsing checks every field, fills defaults (conv2d stride 1,
 * padding 0; maxpool2d stride = kernel) and checks that shapes chain: fully
 * when the input entry gives the input shape, otherwise as far as the layers
 * alone tell (channels, feature counts). */
#ifndef LPS_ARCH_H
#define LPS_ARCH_H

#include "lualps.h"

#define LPS_ARCH_MAX_LAYERS 4096
#define LPS_ARCH_UNKNOWN (-1) /* a size that needs the input shape */

typedef enum {
    LPS_ARCH_INPUT, LPS_ARCH_CONV2D, LPS_ARCH_MAXPOOL2D, LPS_ARCH_RELU, LPS_ARCH_TANH,
    LPS_ARCH_FLATTEN, LPS_ARCH_LINEAR, LPS_ARCH_NTYPES
} lps_arch_type;

typedef struct lps_arch_entry {
    lps_arch_type type;
    int64_t in, out;                  /* linear: features; conv2d: channels */
    int64_t kernel, stride, padding;  /* conv2d, maxpool2d (defaults filled) */
    /* Shape after this entry, without the batch: rank 1 (features) or 3
     * (channels, height, width), 0 if not known; sizes may be UNKNOWN. The
     * input entry holds its own shape here. */
    int rank;
    int64_t shape[3];
} lps_arch_entry;

typedef struct lps_arch {
    size_t n;                 /* entries, the input entry included */
    int has_input;            /* entries[0] is the input entry */
    lps_arch_entry *entries;
} lps_arch;

/* Parse and check text[0..len). Errors are LPS_EFORMAT "arch: ..." naming
 * the layer, the field and the sizes. */
lps_status lps_arch_parse(lps_arch **out, const char *text, size_t len);
/* The canonical JSON text (fixed key order, every field written), malloc'd
 * and NUL-terminated; parsing it gives the same arch. */
lps_status lps_arch_to_json(const lps_arch *a, char **text, size_t *len);
void lps_arch_free(lps_arch *a);
const char *lps_arch_type_name(lps_arch_type t);

#endif
