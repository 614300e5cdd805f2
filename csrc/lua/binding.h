/* binding.h - what the Lua binding files share (the only C files that
 * include Lua headers). Shaped like Lua's own lauxlib and linit: lua_aux.c
 * holds the argument helpers every file uses, lua_main.c only opens the
 * others, and no file calls a file that calls it back. */
#ifndef LPS_BINDING_H
#define LPS_BINDING_H

#include <lauxlib.h>
#include <lua.h>

#include "lualps.h"

#define LPS_TENSOR_MT "lualps.Tensor"
#define LPS_GENERATOR_MT "lualps.Generator"
#define LPS_MODULE_MT "lualps.Module"
#define LPS_OPTIM_MT "lualps.Optimizer"

/* ------------------------------------------------ lua_aux.c: helpers */

/* Raise the last C error as a Lua error (never returns). */
int lps_lua_raise(lua_State *L);
/* Raise unless s is LPS_OK. */
#define LPS_LCHECK(L, s) do { if ((s) != LPS_OK) lps_lua_raise(L); } while (0)
/* Scratch memory owned by a userdata pushed on the stack, so a Lua error
 * anywhere after it cannot leak it. */
void *lps_lua_scratch(lua_State *L, size_t bytes);
/* The one label checker. Labels at idx: a tensor or a table of whole
 * numbers. Class numbers are 1-based at the Lua boundary, each in
 * 1..classes (classes 0: any number >= 1), and come back 0-based; with
 * classes < 0 (LPS_CATEGORIES) they are categories compared only for
 * equality (retrieval, clustering scores): any whole numbers, kept as given.
 * n >= 0: exactly n labels; n < 0: any count, stored in *count. In scratch
 * memory pushed on the stack. Errors name op and what ("labels"). */
#define LPS_CATEGORIES (-1)
int64_t *lps_lua_checklabels(lua_State *L, int idx, int64_t n, int64_t classes, const char *op,
                             const char *what, int64_t *count);
/* The same as int32 (the training loop's labels). */
int32_t *lps_lua_checklabels32(lua_State *L, int idx, int64_t n, int64_t classes, const char *op);
/* Options of a table at idx (absent table or key: def). */
int lps_lua_optint(lua_State *L, int idx, const char *key, int def, const char *op);
/* The generator at opts.generator (idx a table), or NULL. */
lps_rng *lps_lua_optgenerator(lua_State *L, int idx);
/* A list of 1-based indices pushed as a table (add 1 to each 0-based v[i]). */
void lps_lua_pushindices(lua_State *L, const int64_t *v, int64_t n, int64_t add);

/* Tensor arguments and results. The userdata holds an owned lps_tensor*
 * (NULL once closed); its functions and methods are lua_tensor.c's. */
typedef struct { lps_tensor *t; } lps_tensor_ud;
lps_tensor *lps_lua_checktensor(lua_State *L, int idx);
lps_tensor *lps_lua_totensor(lua_State *L, int idx); /* NULL if not a live tensor */
/* Push a new zero tensor owned by Lua; raises on bad shape or no memory. */
lps_tensor *lps_lua_newtensor(lua_State *L, int ndim, const int64_t *shape);
/* The same, uninitialised: for outputs an operation overwrites entirely. */
lps_tensor *lps_lua_emptytensor(lua_State *L, int ndim, const int64_t *shape);
/* Push t, taking ownership (t may be NULL: then raise the last error). */
lps_tensor *lps_lua_pushtensor(lua_State *L, lps_tensor *t);

/* ------------------------------------------------ lua_rng.c: generators */

/* The generator at idx if it is one, else the module's default generator. */
lps_rng *lps_lua_optrng(lua_State *L, int idx);

/* ------------------------------------------------ lua_arch.c: architectures */

/* The architecture at idx: a list of entry tables or its JSON text; owned by
 * a userdata pushed on the stack. Errors start with op. */
lps_arch *lps_lua_checkarch(lua_State *L, int idx, const char *op);
/* A userdata on the stack that frees the arch stored in *box at collection. */
lps_arch **lps_lua_newarchbox(lua_State *L);
/* Push a as a list of entry tables (the input entry first, if any). */
void lps_lua_pusharch(lua_State *L, const lps_arch *a);

/* ------------------------------------------------ lua_nn.c: modules */

/* The layer of the module userdata at idx (raises if not a live module). */
lps_layer *lps_lua_checkmodule(lua_State *L, int idx);

/* ------------------------------------------------ the sub-bindings */
/* Each adds its functions (and metatables) to the table on top of the
 * stack; lua_main.c says which table. */
void lps_lua_open_rng(lua_State *L);
void lps_lua_open_sys(lua_State *L);
void lps_lua_open_tensor(lua_State *L);
void lps_lua_open_arch(lua_State *L);
void lps_lua_open_nn(lua_State *L);
void lps_lua_open_train(lua_State *L);
void lps_lua_open_data(lua_State *L);
void lps_lua_open_safetensors(lua_State *L);
void lps_lua_open_modelset(lua_State *L);
void lps_lua_open_lps(lua_State *L);
void lps_lua_open_net(lua_State *L);
void lps_lua_open_templates(lua_State *L);
void lps_lua_open_metrics(lua_State *L);
void lps_lua_open_project(lua_State *L);
void lps_lua_open_glyphs(lua_State *L);
void lps_lua_open_transferability(lua_State *L);

#endif
