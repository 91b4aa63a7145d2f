/* Allocation workload: waits argv[1] seconds (default 0), then allocates exactly 1,000 blocks of
 * 4,096 bytes from alloc_site_a, frees the first 500 (the oldest half), holds the rest for
 * argv[2] seconds (default 0) and exits without freeing them: 2,048,000 bytes stay live at
 * alloc_site_a, 4,096,000 were allocated there in 1,000 calls. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COUNT 1000
#define SIZE 4096

static void *blocks[COUNT];
volatile unsigned char sink;

__attribute__((noinline)) void *alloc_site_a(size_t n) {
    void *p = malloc(n);
    /* Touch it, so the allocation is not optimised away. */
    memset(p, 1, n);
    return p;
}

static void nap(double secs) {
    if (secs > 0) usleep((useconds_t)(secs * 1e6));
}

int main(int argc, char **argv) {
    nap(argc > 1 ? atof(argv[1]) : 0);
    for (int i = 0; i < COUNT; i++) blocks[i] = alloc_site_a(SIZE);
    for (int i = 0; i < COUNT / 2; i++) {
        sink ^= ((unsigned char *)blocks[i])[i];
        free(blocks[i]);
        blocks[i] = 0;
    }
    nap(argc > 2 ? atof(argv[2]) : 0);
    for (int i = COUNT / 2; i < COUNT; i++) sink ^= ((unsigned char *)blocks[i])[0];
    return 0;
}
