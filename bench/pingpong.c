/* Context-switch-heavy benchmark: two threads pass a token through two pipes for argv[1]
 * seconds (default 10); every pass blocks one thread and wakes the other. Prints the passes per
 * second as "ops_per_sec=N". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int ab[2], ba[2];
static volatile int stop;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *echo(void *arg) {
    (void)arg;
    char c;
    while (read(ab[0], &c, 1) == 1) {
        if (write(ba[1], &c, 1) != 1) break;
    }
    return NULL;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 10.0;
    if (pipe(ab) || pipe(ba)) return 1;
    pthread_t t;
    pthread_create(&t, NULL, echo, NULL);
    unsigned long passes = 0;
    double start = now(), end = start + secs;
    char c = 'x';
    while (now() < end) {
        if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1) return 1;
        passes++;
    }
    close(ab[1]);
    pthread_join(t, NULL);
    printf("ops_per_sec=%.0f\n", passes / (now() - start));
    return 0;
}
