/* error.c - thread-local error messages and BLAS thread control. */
#include "lualps.h"

#include <cblas.h>
#include <stdarg.h>
#include <stdio.h>

static _Thread_local char errbuf[1024];

const char *lps_errmsg(void) { return errbuf; }

lps_status lps_fail(lps_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return s;
}

const char *lps_status_name(lps_status s)
{
    switch (s) {
    case LPS_OK: return "ok";
    case LPS_EINVAL: return "invalid argument";
    case LPS_ESHAPE: return "shape mismatch";
    case LPS_ERANGE: return "index out of range";
    case LPS_ENOMEM: return "out of memory";
    case LPS_EIO: return "I/O error";
    case LPS_EFORMAT: return "malformed data";
    case LPS_ENUMERIC: return "non-finite value";
    }
    return "unknown status";
}

void lps_set_num_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }

const char *lps_blas_kernel(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "unknown";
}

const char *lps_blas_config(void)
{
    const char *c = openblas_get_config();
    return c ? c : "unknown";
}
int lps_get_num_threads(void) { return openblas_get_num_threads(); }
