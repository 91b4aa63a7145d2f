/* Off-CPU workload: waits argv[1] seconds (default 0.5) in warm_up, then sleeps argv[2] (default
 * 10) times 200 ms in wait_here, called from main, and exits: 2.0 s off CPU at wait_here. */
#include <stdlib.h>
#include <time.h>

static void nap(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

__attribute__((noinline)) void warm_up(double secs) { nap((long)(secs * 1000)); }

__attribute__((noinline)) void wait_here(void) { nap(200); }

int main(int argc, char **argv) {
    warm_up(argc > 1 ? atof(argv[1]) : 0.5);
    int n = argc > 2 ? atoi(argv[2]) : 10;
    for (int i = 0; i < n; i++) wait_here();
    return 0;
}
