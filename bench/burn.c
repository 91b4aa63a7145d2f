/* CPU-bound benchmark: one thread per online CPU runs an integer loop for argv[1] seconds
 * (default 10) and the program prints the total loop rate as "ops_per_sec=N". Built with frame
 * pointers so every profiler it is run under gets full stacks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double secs = 10.0;
static volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long work(unsigned long x) {
    for (int i = 0; i < 100000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

static void *run(void *arg) {
    unsigned long *ops = arg, x = 1;
    double end = now() + secs;
    while (now() < end) {
        x = work(x);
        *ops += 100000;
    }
    sink = x;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) secs = atof(argv[1]);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    pthread_t t[256];
    unsigned long ops[256] = {0};
    if (n > 256) n = 256;
    double start = now();
    for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, run, &ops[i]);
    unsigned long total = 0;
    for (long i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        total += ops[i];
    }
    printf("ops_per_sec=%.0f threads=%ld\n", total / (now() - start), n);
    return 0;
}
