/* Block I/O workload: waits argv[2] seconds (default 0), then writes 8 MiB to the file argv[1]
 * in 64 KiB write(2)s from write_file, fsyncs it from sync_file, and removes it. The 8 MiB reach
 * the disk as writes submitted by this process during the fsync. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define TOTAL (8 * 1024 * 1024)

static char buf[CHUNK];

__attribute__((noinline)) void write_file(int fd) {
    for (int done = 0; done < TOTAL; done += CHUNK) {
        if (write(fd, buf, CHUNK) != CHUNK) exit(1);
    }
}

__attribute__((noinline)) void sync_file(int fd) {
    if (fsync(fd) != 0) exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (argc > 2) usleep((useconds_t)(atof(argv[2]) * 1e6));
    memset(buf, 'x', sizeof buf);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 1;
    write_file(fd);
    sync_file(fd);
    close(fd);
    unlink(argv[1]);
    return 0;
}
