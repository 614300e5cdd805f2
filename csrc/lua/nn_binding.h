/* nn_binding.h - shared by lua_nn.c, lua_train.c and lua_data.c. */
#ifndef LPS_NN_BINDING_H
#define LPS_NN_BINDING_H

#include "lua/binding.h"

#define LPS_MODULE_MT "lualps.Module"
#define LPS_OPTIM_MT "lualps.Optimizer"

/* The layer of the module userdata at idx (raises if not a module). */
lps_layer *lps_lua_checkmodule(lua_State *L, int idx);
/* Labels at idx (a tensor or a table of n 1-based integers in 1..classes)
 * as 0-based int32 in GC-owned memory pushed on the stack. */
int32_t *lps_lua_checklabels(lua_State *L, int idx, int64_t n, int64_t classes, const char *op);
/* Number of classes the model outputs for inputs shaped like x (raises). */
int64_t lps_lua_model_classes(lua_State *L, lps_layer *m, const lps_tensor *x, const char *op);

/* Add their functions to the table on top of the stack. */
void lps_lua_open_train(lua_State *L);
void lps_lua_open_data(lua_State *L);

#endif
