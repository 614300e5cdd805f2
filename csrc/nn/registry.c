/* registry.c - every layer type, in the order error messages list them.
 * Adding a layer: its file in csrc/nn/ defines `const lps_layer_type
 * lps_<name>_type`; declare it and list it here. */
#include "nn/nn_internal.h"

#include <string.h>

extern const lps_layer_type lps_conv2d_type, lps_maxpool2d_type, lps_relu_type, lps_tanh_type,
    lps_flatten_type, lps_linear_type, lps_batchnorm1d_type, lps_batchnorm2d_type, lps_dropout_type,
    lps_residual_type, lps_avgpool2d_type, lps_adaptive_avgpool2d_type, lps_gelu_type,
    lps_sigmoid_type, lps_silu_type, lps_leaky_relu_type;

static const lps_layer_type *const types[] = {
    &lps_conv2d_type, &lps_maxpool2d_type, &lps_relu_type, &lps_tanh_type, &lps_flatten_type,
    &lps_linear_type, &lps_batchnorm1d_type, &lps_batchnorm2d_type, &lps_dropout_type,
    &lps_residual_type, &lps_avgpool2d_type, &lps_adaptive_avgpool2d_type, &lps_gelu_type,
    &lps_sigmoid_type, &lps_silu_type, &lps_leaky_relu_type,
};

#define NTYPES ((int)(sizeof types / sizeof types[0]))

const lps_layer_type *lps_layer_type_find(const char *name)
{
    for (int i = 0; name && i < NTYPES; i++)
        if (strcmp(types[i]->name, name) == 0) return types[i];
    return NULL;
}

const lps_layer_type *lps_layer_type_at(int i) { return i >= 0 && i < NTYPES ? types[i] : NULL; }
const char *lps_layer_type_name(const lps_layer_type *t) { return t->name; }
const lps_field *lps_layer_type_fields(const lps_layer_type *t) { return t->fields; }
int lps_layer_type_branches(const lps_layer_type *t) { return t->branches; }
