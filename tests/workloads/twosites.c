/* Two allocation sites with known totals, interleaved: site_a allocates 300 MiB in 76,800 blocks
 * of 4 KiB, site_b 100 MiB in 102,400 blocks of 1 KiB (three of A to four of B). Then every
 * other block of A is freed: 150 MiB stay live at A, 100 MiB at B. Waits argv[1] seconds
 * (default 0) before and argv[2] seconds (default 0) after, and exits without freeing the rest. */
#include <stdlib.h>
#include <unistd.h>

#define A_COUNT 76800
#define B_COUNT 102400

static char *a[A_COUNT];
static char *b[B_COUNT];

__attribute__((noinline)) char *site_a(void) {
    char *p = malloc(4096);
    p[0] = 1;
    return p;
}

__attribute__((noinline)) char *site_b(void) {
    char *p = malloc(1024);
    p[0] = 2;
    return p;
}

static void nap(double secs) {
    if (secs > 0) usleep((useconds_t)(secs * 1e6));
}

int main(int argc, char **argv) {
    nap(argc > 1 ? atof(argv[1]) : 0);
    int ia = 0, ib = 0;
    for (int g = 0; g < A_COUNT / 3; g++) {
        for (int k = 0; k < 3; k++) a[ia++] = site_a();
        for (int k = 0; k < 4; k++) b[ib++] = site_b();
    }
    for (int i = 0; i < A_COUNT; i += 2) free(a[i]);
    nap(argc > 2 ? atof(argv[2]) : 0);
    return a[1][0] + b[0][0] == 3 ? 0 : 1;
}
