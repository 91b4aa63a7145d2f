/* Syscall workload: waits argv[1] seconds (default 0), then makes exactly argv[2] (default
 * 5,000) write(2) calls of 16 bytes to /dev/null from write_many, and exits. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((noinline)) void write_many(int fd, int n) {
    static const char buf[16] = "0123456789abcde";
    for (int i = 0; i < n; i++) {
        if (write(fd, buf, sizeof buf) != sizeof buf) exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc > 1) usleep((useconds_t)(atof(argv[1]) * 1e6));
    int n = argc > 2 ? atoi(argv[2]) : 5000;
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0) return 1;
    write_many(fd, n);
    return 0;
}
