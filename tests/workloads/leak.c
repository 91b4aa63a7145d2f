/* A steady leak: leak_site allocates 1 MiB every 100 ms (about 10 MiB/s), touches it and never
 * frees it, for argv[1] seconds (default 10, at most 60); the process then stays idle until
 * argv[2] seconds have passed since it started (default: exits at once). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLOCK (1 << 20)

volatile char sink;

__attribute__((noinline)) char *leak_site(int i) {
    char *block = malloc(BLOCK);
    if (block) {
        memset(block, i & 0xff, BLOCK);
        sink = block[i % BLOCK];
    }
    return block;
}

int main(int argc, char **argv) {
    int secs = argc > 1 ? atoi(argv[1]) : 10;
    int total = argc > 2 ? atoi(argv[2]) : 0;
    if (secs > 60) secs = 60;
    struct timespec pause = {0, 100 * 1000 * 1000};
    for (int i = 0; i < secs * 10; i++) {
        if (!leak_site(i)) return 1;
        nanosleep(&pause, NULL);
    }
    for (int i = secs * 10; i < total * 10; i++) nanosleep(&pause, NULL);
    return 0;
}
