/* Duty-cycle workload: for argv[1] seconds (default 60), keeps one CPU busy in burn for argv[2]
 * percent (default 30) of every 20 ms and sleeps the rest, so its CPU time is known from /proc
 * and steady enough for a sampler's counts to estimate it. */
#include <stdlib.h>
#include <time.h>

static double now_s(int clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void burn(double until) {
    volatile unsigned long x = 0;
    while (now_s(CLOCK_MONOTONIC) < until) {
        for (int i = 0; i < 10000; i++) x += i;
    }
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 60;
    double duty = (argc > 2 ? atof(argv[2]) : 30) / 100.0;
    const double period = 0.020;
    double end = now_s(CLOCK_MONOTONIC) + secs;
    while (now_s(CLOCK_MONOTONIC) < end) {
        double start = now_s(CLOCK_MONOTONIC);
        burn(start + period * duty);
        double rest = start + period - now_s(CLOCK_MONOTONIC);
        if (rest > 0) {
            struct timespec ts = {0, (long)(rest * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}
