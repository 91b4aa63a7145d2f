/* Known inlining: `crunch` is always inlined into `work`, which is not inlined, and nearly all
 * the time goes into crunch's loop. Runs for argv[1] seconds (default 3). */
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

static inline __attribute__((always_inline)) unsigned long crunch(unsigned long n) {
    unsigned long x = sink;
    for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

__attribute__((noinline)) void work(void) {
    sink = crunch(400000);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 3;
    double end = now() + secs;
    while (now() < end) work();
    return 0;
}
