/* Call-count workload: waits argv[1] seconds (default 0), then calls counted() exactly 12,345
 * times from main and slow_call() (about 3 ms each) 20 times from main, and exits. */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

volatile long total;

__attribute__((noinline)) void counted(int i) { total += i; }

__attribute__((noinline)) void slow_call(void) {
    struct timespec ts = {0, 3000000};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1) usleep((useconds_t)(atof(argv[1]) * 1e6));
    for (int i = 0; i < 12345; i++) counted(i);
    for (int i = 0; i < 20; i++) slow_call();
    return 0;
}
