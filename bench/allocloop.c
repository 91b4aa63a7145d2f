/* Allocation-heavy loop for the allocation profilers' overhead: ARGV[1] seconds (default 5) of
 * mixed-size malloc/free pairs (16 B to 2 KiB, log-uniform, from a fixed seed), each freeing a
 * random block of a pool of 4,096 live ones, so the allocator sees a realistic mix of sizes and
 * lifetimes. Prints `ops_per_sec=N` (pairs per second), the pairs and the bytes allocated. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POOL 4096

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t state = 0x9E3779B97F4A7C15ULL;
static inline uint64_t next(void) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

__attribute__((noinline)) void *alloc_small(size_t n) { return malloc(n); }

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 5;
    static void *pool[POOL];
    uint64_t ops = 0, bytes = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 100000; i++) {
            uint64_t r = next();
            size_t n = (size_t)16 << (r % 7); /* 16 B .. 2 KiB */
            n += (r >> 8) % n;
            unsigned slot = (r >> 32) % POOL;
            free(pool[slot]);
            char *p = alloc_small(n);
            p[0] = 1;
            pool[slot] = p;
            bytes += n;
        }
        ops += 100000;
        t = now() - t0;
    } while (t < secs);
    for (int i = 0; i < POOL; i++) free(pool[i]);
    printf("ops_per_sec=%.0f pairs=%llu bytes=%llu\n", ops / t, (unsigned long long)ops,
           (unsigned long long)bytes);
    return 0;
}
