/* parallel.c - a small pool of worker threads for the layers' own loops
 * (convolution kernels, pooling, activations): the batch is split into fixed
 * contiguous parts, one per thread, so results depend only on the thread
 * count. While a job runs, BLAS is switched to one thread: each worker calls
 * it on its own part. Workers are created on first use and kept until
 * lps_threads_release; they spin briefly for the next job before sleeping. */
#include "nn/nn_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RELAX() _mm_pause() /* spin politely: the other core's thread may need it */
#else
#define RELAX() ((void)0)
#endif

/* Pauses spun waiting for the next job (a worker) or for the others to finish
 * (the caller) before sleeping: some tens of microseconds. */
enum { SPINS = 2000 };

static struct {
    pthread_mutex_t run;      /* one job at a time (callers on several threads wait) */
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    pthread_t tid[LPS_PAR_MAX];
    int started;              /* workers running (threads 1..started) */
    unsigned born[LPS_PAR_MAX]; /* the generation each worker was started at */
    atomic_uint generation;   /* bumped for each job */
    atomic_int stop;          /* the next generation tells the workers to exit */
    atomic_int pending;       /* workers still busy with the job */
    lps_task_fn fn;
    void *ctx;
    int nt;
} pool = {.run = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    unsigned seen = pool.born[t]; /* jobs from before its start are not its own */
    for (;;) {
        unsigned g;
        /* spin a little (a layer's next job often follows at once), then sleep */
        int spins = 0;
        while ((g = atomic_load(&pool.generation)) == seen && spins < SPINS) {
            RELAX();
            spins++;
        }
        if (g == seen) {
            pthread_mutex_lock(&pool.lock);
            while ((g = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = g;
        if (atomic_load(&pool.stop)) return NULL; /* lps_threads_release joins it */
        if (t < pool.nt) pool.fn(pool.ctx, t, pool.nt);
        if (atomic_fetch_sub(&pool.pending, 1) == 1) { /* the last one wakes the caller */
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

int lps_par_threads(void)
{
    int n = lps_get_num_threads();
    return n < 1 ? 1 : n > LPS_PAR_MAX ? LPS_PAR_MAX : n;
}

void lps_par_run(int nt, lps_task_fn fn, void *ctx)
{
    if (nt > LPS_PAR_MAX) nt = LPS_PAR_MAX;
    if (nt <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool.run);
    pthread_mutex_lock(&pool.lock);
    while (pool.started < nt - 1) {
        pool.born[pool.started + 1] = atomic_load(&pool.generation);
        if (pthread_create(&pool.tid[pool.started], NULL, worker, (void *)(intptr_t)(pool.started + 1)))
            break;
        pool.started++;
    }
    int have = pool.started + 1;
    pthread_mutex_unlock(&pool.lock);
    if (nt > have) nt = have; /* could not start more threads: fewer parts */
    if (nt <= 1) {
        pthread_mutex_unlock(&pool.run);
        fn(ctx, 0, 1);
        return;
    }
    int blas = lps_get_num_threads();
    lps_set_num_threads(1);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.nt = nt;
    atomic_store(&pool.pending, pool.started);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add(&pool.generation, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    fn(ctx, 0, nt);
    /* wait for the others: spin a little, then sleep (a worker may have lost
     * its core to another process, and spinning would keep it from it) */
    for (int spins = 0; atomic_load(&pool.pending) > 0 && spins < SPINS; spins++) RELAX();
    if (atomic_load(&pool.pending) > 0) {
        pthread_mutex_lock(&pool.lock);
        while (atomic_load(&pool.pending) > 0) pthread_cond_wait(&pool.done, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
    }
    lps_set_num_threads(blas);
    pthread_mutex_unlock(&pool.run);
}

/* Workers end here rather than at process exit, where a thread asleep in a
 * futex wait meets the exit-time checkers (LeakSanitizer stops every thread).
 * They are joined, not only counted out: a worker still returning through
 * this library's code when the Lua state closes and unloads it would jump
 * to an unmapped address. */
void lps_threads_release(void)
{
    pthread_mutex_lock(&pool.run);
    pthread_mutex_lock(&pool.lock);
    int n = pool.started;
    if (n > 0) {
        atomic_store(&pool.stop, 1);
        atomic_fetch_add(&pool.generation, 1);
        pthread_cond_broadcast(&pool.wake);
    }
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < n; i++) pthread_join(pool.tid[i], NULL);
    pthread_mutex_lock(&pool.lock);
    pool.started = 0;
    pthread_mutex_unlock(&pool.lock);
    atomic_store(&pool.stop, 0);
    pthread_mutex_unlock(&pool.run);
}

void lps_par_range(int64_t n, int t, int nt, int64_t *lo, int64_t *hi)
{
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}
