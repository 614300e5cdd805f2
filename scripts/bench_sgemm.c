/* bench_sgemm.c - the peer for scripts/bench_tensor.lua: raw cblas_sgemm and
 * memcpy from C, timed the same way (median of repeats, monotonic clock).
 * Usage: bench_sgemm THREADS M K N [M K N ...]; prints "sgemm M K N GFLOPS". */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 5 || (argc - 2) % 3) {
        fprintf(stderr, "usage: %s THREADS M K N [M K N ...]\n", argv[0]);
        return 2;
    }
    openblas_set_num_threads(atoi(argv[1]));
    for (int s = 2; s + 2 < argc; s += 3) {
        int m = atoi(argv[s]), k = atoi(argv[s + 1]), n = atoi(argv[s + 2]);
        float *a = malloc(sizeof(float) * (size_t)m * k), *b = malloc(sizeof(float) * (size_t)k * n),
              *c = malloc(sizeof(float) * (size_t)m * n);
        for (long i = 0; i < (long)m * k; i++) a[i] = (float)(i % 7) * 0.1f;
        for (long i = 0; i < (long)k * n; i++) b[i] = (float)(i % 5) * 0.1f;
        double flop = 2.0 * m * k * n, t[31];
        int reps = flop > 1e9 ? 5 : flop > 1e8 ? 15 : 31, inner = flop > 1e8 ? 1 : (int)(1e8 / flop) + 1;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1, a, k, b, n, 0, c, n);
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            for (int i = 0; i < inner; i++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1, a, k, b, n, 0, c, n);
            t[r] = (now() - t0) / inner;
        }
        qsort(t, (size_t)reps, sizeof t[0], cmp);
        printf("sgemm %d %d %d %.3f\n", m, k, n, flop / t[reps / 2] * 1e-9);
        free(a), free(b), free(c);
    }
    /* memcpy bandwidth over 4 MB (1M floats): read + write */
    size_t bytes = (size_t)1 << 22;
    char *x = malloc(bytes), *y = malloc(bytes);
    memset(x, 1, bytes);
    double t[31];
    for (int r = 0; r < 31; r++) {
        double t0 = now();
        for (int i = 0; i < 20; i++) memcpy(y + (i & 1), x, bytes - 1);
        t[r] = (now() - t0) / 20;
    }
    qsort(t, 31, sizeof t[0], cmp);
    printf("memcpy %.3f\n", 2.0 * bytes / t[15] * 1e-9);
    free(x), free(y);
    return 0;
}
