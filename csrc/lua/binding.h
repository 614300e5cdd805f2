/* binding.h - helpers shared by the Lua binding files (the only C files that
 * include Lua headers). */
#ifndef LPS_BINDING_H
#define LPS_BINDING_H

#include <lauxlib.h>
#include <lua.h>

#include "lualps.h"

#define LPS_TENSOR_MT "lualps.Tensor"
#define LPS_GENERATOR_MT "lualps.Generator"

/* Raise the last C error as a Lua error (never returns). */
int lps_lua_raise(lua_State *L);
/* Raise unless s is LPS_OK. */
#define LPS_LCHECK(L, s) do { if ((s) != LPS_OK) lps_lua_raise(L); } while (0)

/* Tensor userdata: holds an owned lps_tensor* (NULL once closed). */
lps_tensor *lps_lua_checktensor(lua_State *L, int idx);
lps_tensor *lps_lua_totensor(lua_State *L, int idx); /* NULL if not a live tensor */
/* Push a new zero tensor owned by Lua; raises on bad shape or no memory. */
lps_tensor *lps_lua_newtensor(lua_State *L, int ndim, const int64_t *shape);
/* The same, uninitialised: for outputs an operation overwrites entirely. */
lps_tensor *lps_lua_emptytensor(lua_State *L, int ndim, const int64_t *shape);
/* Push t, taking ownership (t may be NULL: then raise the last error). */
lps_tensor *lps_lua_pushtensor(lua_State *L, lps_tensor *t);

/* The generator at idx if it is one, else the module's default generator. */
lps_rng *lps_lua_optrng(lua_State *L, int idx);

void lps_lua_open_tensor(lua_State *L);     /* adds tensor functions to the table on top */
void lps_lua_open_generator(lua_State *L);  /* adds manual_seed, generator */
void lps_lua_open_eval(lua_State *L);       /* adds _eval (baselines, metrics) */
void lps_lua_open_safetensors(lua_State *L); /* adds _safetensors */
void lps_lua_open_nn(lua_State *L);       /* adds _nn (layers, optimizers, training, IDX) */
void lps_lua_open_modelset(lua_State *L); /* adds _modelset (the ModelSet store) */
void lps_lua_open_lps(lua_State *L);      /* adds _lps (second-order LPS layers, losses) */
void lps_lua_open_transferability(lua_State *L); /* adds _estimators (LogME, LEEP, k-NN, ridge probe) */

#endif
