/* Fork storm: for argv[1] seconds (default 5), starts a process about every millisecond (up to
 * 1,000 a second), each exec'ing /bin/true, and reaps them. Prints how many it started. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 5.0;
    double end = now() + secs;
    long started = 0;
    struct timespec ms = {0, 1000000};
    while (now() < end) {
        pid_t p = fork();
        if (p == 0) {
            execl("/bin/true", "true", (char *)0);
            _exit(127);
        }
        if (p > 0) started++;
        while (waitpid(-1, 0, WNOHANG) > 0) {
        }
        nanosleep(&ms, 0);
    }
    while (wait(0) > 0) {
    }
    printf("started=%ld\n", started);
    return 0;
}
