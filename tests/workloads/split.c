/* Known-split workload: burns 75% of its CPU time in leaf_hot and 25% in leaf_cold, both called
 * from mid, called from main. Runs for argv[1] seconds (default 5). Each round does a fixed amount
 * of work in both leaves, in a 3:1 ratio of iterations. With argv[2], the ratio flips to 1:3
 * after that many seconds (for comparisons of two ranges). */
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

__attribute__((noinline)) void leaf_hot(unsigned long n) {
    unsigned long x = sink;
    for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    sink = x;
}

__attribute__((noinline)) void leaf_cold(unsigned long n) {
    unsigned long x = sink;
    for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    sink = x;
}

static int flipped;

__attribute__((noinline)) void mid(void) {
    leaf_hot(flipped ? 100000 : 300000);
    leaf_cold(flipped ? 300000 : 100000);
    /* Work after the last call keeps it a real call: as a tail call, leaf_cold would run with
     * mid's frame already gone, and no unwinder (perf's included) could show mid above it. */
    sink = sink + 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 5.0;
    double start = now(), end = start + secs;
    double flip = argc > 2 ? atof(argv[2]) : -1;
    while (now() < end) {
        if (flip >= 0 && !flipped && now() - start >= flip) flipped = 1;
        mid();
    }
    return 0;
}
