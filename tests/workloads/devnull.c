/* Kernel-path workload: writes to /dev/null in a loop for argv[1] seconds (default 5). */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 5.0;
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0) return 1;
    char buf[64] = {0};
    double end = now() + secs;
    while (now() < end)
        for (int i = 0; i < 1000; i++)
            if (write(fd, buf, sizeof buf) < 0) return 1;
    return 0;
}
