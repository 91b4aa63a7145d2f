/* Known RSS growth: touches a new 2 MiB block every 100 ms (about 20 MiB/s) for argv[1]
 * seconds (default 10, at most 60), keeping every block, then exits. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BLOCKS 600
static char *volatile blocks[MAX_BLOCKS];
volatile char sink;

int main(int argc, char **argv) {
    int secs = argc > 1 ? atoi(argv[1]) : 10;
    struct timespec pause = {0, 100 * 1000 * 1000};
    for (int i = 0; i < secs * 10 && i < MAX_BLOCKS; i++) {
        char *block = malloc(2 << 20);
        if (!block) return 1;
        memset(block, i & 0xff, 2 << 20);
        blocks[i] = block;
        sink = block[i];
        nanosleep(&pause, NULL);
    }
    return 0;
}
