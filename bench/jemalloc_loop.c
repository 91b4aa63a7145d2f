/* Allocation-heavy loop for the jemalloc reporter (bench/jemalloc.sh and the suite's jemalloc
 * test), linked against libjemalloc.so.2:
 *
 *   jemalloc_loop PAIRS [LIVE_MB [count]]
 *   jemalloc_loop PAIRS 0 ab
 *
 * First allocates LIVE_MB MiB of blocks that stay live, then makes PAIRS mixed-size malloc/free
 * pairs (16 B to 4 KiB, log-uniform, from a fixed seed), each freeing a random block of a pool
 * of 4,096, and prints `ops_per_sec=N` for the pairs (per second of the thread's CPU time, in the median chunk of 200,000 pairs). With `count`, it also sums the usable size
 * of every allocation (jemalloc samples usable bytes) and prints `alloc_bytes=` and, at
 * `checkpoint` (a function a probe can stop at, called with everything still live),
 * `live_bytes=`. Everything is freed before exit.
 *
 * With `ab`, the pairs alternate, chunk by chunk, between calling malloc and free as the program
 * resolves them (through a preloaded library, if any) and calling jemalloc's own directly, and
 * print the nanoseconds per pair of each (`via_ns=`, `direct_ns=`, median chunks): the cost a
 * preloaded library adds, measured in one process, where the host's noise hits both alike. */
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POOL 4096

/* CPU time of this thread: the loop is single-threaded, and other work on a shared host then
 * slows it less than it would wall time. */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t state = 0x9E3779B97F4A7C15ULL;
static inline uint64_t next(void)
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

static inline size_t draw_size(uint64_t r)
{
    size_t n = (size_t)16 << (r % 8); /* 16 B .. 4 KiB */
    return n + (r >> 8) % n;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) void *alloc_site(size_t n) { return malloc(n); }

/* Where a probe reads the live heap: everything allocated so far and not freed is still live. */
__attribute__((noinline)) void checkpoint(unsigned long long live)
{
    printf("live_bytes=%llu\n", live);
    fflush(stdout);
    __asm__ volatile("" ::: "memory");
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, by_value);
    return v[n / 2];
}

static int ab(unsigned long long pairs)
{
    void *je = dlopen("libjemalloc.so.2", RTLD_NOLOAD | RTLD_LAZY);
    void *(*je_malloc)(size_t) = je ? (void *(*)(size_t))dlsym(je, "malloc") : 0;
    void (*je_free)(void *) = je ? (void (*)(void *))dlsym(je, "free") : 0;
    if (!je_malloc || !je_free) {
        fprintf(stderr, "libjemalloc.so.2 is not loaded\n");
        return 1;
    }
    enum { CHUNK = 100000, MAX = 2048 };
    static double direct[MAX], via[MAX];
    static void *pool[POOL];
    int nd = 0, nv = 0;
    for (unsigned long long done = 0; done < pairs && nv < MAX; done += CHUNK) {
        int direct_chunk = (done / CHUNK) % 2 == 0;
        double t0 = now();
        if (direct_chunk) {
            for (int i = 0; i < CHUNK; i++) {
                uint64_t r = next();
                unsigned slot = (r >> 40) % POOL;
                je_free(pool[slot]);
                char *p = je_malloc(draw_size(r));
                p[0] = 1;
                pool[slot] = p;
            }
        } else {
            for (int i = 0; i < CHUNK; i++) {
                uint64_t r = next();
                unsigned slot = (r >> 40) % POOL;
                free(pool[slot]);
                char *p = alloc_site(draw_size(r));
                p[0] = 1;
                pool[slot] = p;
            }
        }
        double ns = (now() - t0) * 1e9 / CHUNK;
        if (direct_chunk)
            direct[nd++] = ns;
        else
            via[nv++] = ns;
    }
    for (int i = 0; i < POOL; i++)
        free(pool[i]);
    printf("via_ns=%.2f direct_ns=%.2f\n", median(via, nv), median(direct, nd));
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long long pairs = argc > 1 ? strtoull(argv[1], 0, 10) : 20000000ULL;
    unsigned long long live_mb = argc > 2 ? strtoull(argv[2], 0, 10) : 0;
    int count = argc > 3 && strcmp(argv[3], "count") == 0;
    if (argc > 3 && strcmp(argv[3], "ab") == 0)
        return ab(pairs);
    unsigned long long alloc_bytes = 0, live = 0;

    size_t cap = 1024, n_live = 0;
    void **kept = malloc(cap * sizeof *kept);
    alloc_bytes += malloc_usable_size(kept);
    live += malloc_usable_size(kept);
    while (live_mb && live < live_mb << 20) {
        if (n_live == cap) {
            /* realloc ends the old block's life and starts a new one */
            live -= malloc_usable_size(kept);
            void **grown = realloc(kept, 2 * cap * sizeof *kept);
            if (!grown)
                return 1;
            alloc_bytes += malloc_usable_size(grown);
            live += malloc_usable_size(grown);
            kept = grown;
            cap *= 2;
        }
        char *p = alloc_site(draw_size(next()));
        p[0] = 1;
        kept[n_live++] = p;
        size_t u = malloc_usable_size(p);
        alloc_bytes += u;
        live += u;
    }

    /* Timed in chunks; the rate is that of the median chunk, which a burst of other work on a
     * shared host does not move. */
    static void *pool[POOL];
    enum { CHUNK = 200000, MAX_CHUNKS = 4096 };
    static double chunk_secs[MAX_CHUNKS];
    int chunks = 0;
    double t0 = now(), mark = t0;
    for (unsigned long long i = 0; i < pairs; i++) {
        if (i % CHUNK == CHUNK - 1 && chunks < MAX_CHUNKS) {
            double t = now();
            chunk_secs[chunks++] = t - mark;
            mark = t;
        }
        uint64_t r = next();
        unsigned slot = (r >> 40) % POOL;
        if (count && pool[slot])
            live -= malloc_usable_size(pool[slot]);
        free(pool[slot]);
        char *p = alloc_site(draw_size(r));
        p[0] = 1;
        pool[slot] = p;
        if (count) {
            size_t u = malloc_usable_size(p);
            alloc_bytes += u;
            live += u;
        }
    }
    double t = now() - t0;
    if (chunks >= 5) {
        qsort(chunk_secs, chunks, sizeof *chunk_secs, by_value);
        t = chunk_secs[chunks / 2] * ((double)pairs / CHUNK);
    }
    printf("ops_per_sec=%.0f\n", pairs / (t > 0 ? t : 1e-9));
    if (count) {
        printf("alloc_bytes=%llu\n", alloc_bytes);
        checkpoint(live);
    }
    for (int i = 0; i < POOL; i++)
        free(pool[i]);
    for (size_t i = 0; i < n_live; i++)
        free(kept[i]);
    free(kept);
    return 0;
}
