/* vDSO workload: main calls tick in a loop for argv[1] seconds (default 3); tick reads the
 * monotonic clock 1000 times, which runs in the vDSO, not in the kernel. */
#include <stdlib.h>
#include <time.h>

volatile long sink;

__attribute__((noinline)) void tick(void) {
    struct timespec ts;
    for (int i = 0; i < 1000; i++) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sink += ts.tv_nsec;
    }
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        tick();
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < secs);
    return 0;
}
