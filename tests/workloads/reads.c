/* read() workload of known shape: waits argv[1] seconds (default 1), then reads /dev/zero
 * argv[2] times (default 1000) 4096 bytes and argv[3] times (default 300) 100 bytes, argv[4]
 * rounds (default 1) 100 ms apart, and exits. Every read returns its full size, so the
 * histogram of read sizes is known exactly. */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    double wait = argc > 1 ? atof(argv[1]) : 1.0;
    int big = argc > 2 ? atoi(argv[2]) : 1000;
    int small = argc > 3 ? atoi(argv[3]) : 300;
    int rounds = argc > 4 ? atoi(argv[4]) : 1;
    struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
    nanosleep(&ts, NULL);
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) return 1;
    static char buf[4096];
    struct timespec gap = {0, 100000000L};
    for (int r = 0; r < rounds; r++) {
        if (r > 0) nanosleep(&gap, NULL);
        for (int i = 0; i < big; i++)
            if (read(fd, buf, 4096) != 4096) return 2;
        for (int i = 0; i < small; i++)
            if (read(fd, buf, 100) != 100) return 3;
    }
    close(fd);
    return 0;
}
