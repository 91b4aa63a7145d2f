/* Burst workload: waits argv[1] seconds (default 0), then burst_site allocates exactly 1,000
 * blocks of 64 bytes in a tight loop, keeping and touching each one (so no call is a tail call
 * and none is optimised away), and main frees them all: 64,000 bytes in 1,000 calls from
 * main -> burst_site. */
#include <stdlib.h>
#include <unistd.h>

#define COUNT 1000
#define SIZE 64

void *blocks[COUNT];
volatile unsigned char sink;

__attribute__((noinline)) void burst_site(void) {
    for (int i = 0; i < COUNT; i++) {
        unsigned char *p = malloc(SIZE);
        p[0] = (unsigned char)i;
        blocks[i] = p;
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && atof(argv[1]) > 0) usleep((useconds_t)(atof(argv[1]) * 1e6));
    burst_site();
    for (int i = 0; i < COUNT; i++) {
        sink ^= ((unsigned char *)blocks[i])[0];
        free(blocks[i]);
    }
    return 0;
}
