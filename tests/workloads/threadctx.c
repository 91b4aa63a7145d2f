// Thread context whose truth is known. Links Baton's C helper (included whole).
//
//   threadctx cpu SECONDS      burns CPU: 3 of every 4 slices of 5 ms with endpoint=/a, the
//                              4th with endpoint=/b; /b slices also carry a fixed trace
//   threadctx offcpu SECONDS   the same, sleeping instead of burning
//   threadctx garbage SECONDS  burns CPU while writing garbage into its own thread context:
//                              random records marked valid, wild sizes, pointers to nowhere
//   threadctx many SECONDS     burns CPU under 3,000 distinct endpoints, a 200-byte value and
//                              a value that is not UTF-8
//   threadctx plain SECONDS    burns CPU as `cpu` does, publishing nothing
//   threadctx alloc SECONDS    in rounds, allocates and frees 3 MiB in 4 KiB blocks under
//                              endpoint=/a, then 1 MiB under endpoint=/b
//   threadctx setcost N        times N label changes and prints the ns each took
#include "../../helpers/c/baton_threadctx.c"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SLICE_NS 5000000ULL

static const unsigned char TRACE[16] = {0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd,
                                        0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c};
static const unsigned char SPAN[8] = {0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31};
static const unsigned char NONE[16];

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static volatile unsigned long sink;

__attribute__((noinline)) static void burn_until(unsigned long long end)
{
    while (now_ns() < end)
        for (int i = 0; i < 1000; i++)
            sink += i * 7;
}

static void sleep_until(unsigned long long end)
{
    unsigned long long t = now_ns();
    if (t >= end)
        return;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(end - t)};
    nanosleep(&ts, 0);
}

static void plain(double seconds)
{
    unsigned long long start = now_ns(), stop = start + (unsigned long long)(seconds * 1e9);
    for (unsigned long long i = 0;; i++) {
        unsigned long long end = start + (i + 1) * SLICE_NS;
        if (end > stop)
            break;
        burn_until(end);
    }
}

/* Through a volatile pointer: the compiler may not elide a malloc it cannot see. */
static void *(*volatile allocator)(size_t) = malloc;

__attribute__((noinline)) static void allocate(unsigned long bytes)
{
    for (unsigned long done = 0; done < bytes; done += 4096) {
        char *p = allocator(4096);
        if (p) {
            p[0] = (char)done;
            sink += (unsigned long)p[0];
        }
        free(p);
    }
}

static void alloc_rounds(double seconds)
{
    int endpoint = baton_ctx_key("endpoint");
    unsigned long long stop = now_ns() + (unsigned long long)(seconds * 1e9);
    while (now_ns() < stop) {
        baton_ctx_set(endpoint, "/a");
        allocate(3UL << 20);
        baton_ctx_set(endpoint, "/b");
        allocate(1UL << 20);
    }
    baton_ctx_clear();
}

static void setcost(unsigned long n)
{
    int endpoint = baton_ctx_key("endpoint");
    unsigned long long t0 = now_ns();
    for (unsigned long i = 0; i < n; i++)
        baton_ctx_set(endpoint, (i & 1) ? "/checkout" : "/cart");
    unsigned long long t1 = now_ns();
    printf("ns_per_set=%.1f\n", (double)(t1 - t0) / (double)n);
}

static void pattern(double seconds, int sleeping)
{
    int endpoint = baton_ctx_key("endpoint");
    unsigned long long start = now_ns(), stop = start + (unsigned long long)(seconds * 1e9);
    for (unsigned long long i = 0;; i++) {
        unsigned long long end = start + (i + 1) * SLICE_NS;
        if (end > stop)
            break;
        if (i % 4 == 3) {
            baton_ctx_set(endpoint, "/b");
            baton_ctx_set_trace(TRACE, SPAN, 1);
        } else {
            baton_ctx_set(endpoint, "/a");
            baton_ctx_set_trace(NONE, NONE, 0);
        }
        if (sleeping)
            sleep_until(end);
        else
            burn_until(end);
    }
    baton_ctx_clear();
}

static void garbage(double seconds)
{
    baton_ctx_key("endpoint");
    baton_ctx_set(0, "/garbage");
    struct record *mine = otel_thread_ctx_v1;
    unsigned long long stop = now_ns() + (unsigned long long)(seconds * 1e9);
    srand(42);
    for (unsigned long i = 0; now_ns() < stop; i++) {
        unsigned char *bytes = (unsigned char *)mine;
        for (int j = 0; j < RECORD_BYTES; j++)
            bytes[j] = (unsigned char)rand();
        mine->valid = (i % 3 == 0) ? (unsigned char)rand() : 1;
        switch (i % 5) {
        case 0: otel_thread_ctx_v1 = (struct record *)(uintptr_t)0x10; break;
        case 1: otel_thread_ctx_v1 = (struct record *)(uintptr_t)0xdead0000beefULL; break;
        case 2: otel_thread_ctx_v1 = (struct record *)((char *)mine + 600); break;
        default: otel_thread_ctx_v1 = mine; break;
        }
        burn_until(now_ns() + 1000000);
    }
    otel_thread_ctx_v1 = mine;
    baton_ctx_clear();
}

static void many(double seconds)
{
    int endpoint = baton_ctx_key("endpoint");
    int blob = baton_ctx_key("blob");
    int raw = baton_ctx_key("raw");
    char long_value[201];
    memset(long_value, 'x', 200);
    long_value[200] = 0;
    baton_ctx_set(blob, long_value);
    baton_ctx_set_n(raw, "\xff\xfe\xfd", 3);
    unsigned long long stop = now_ns() + (unsigned long long)(seconds * 1e9);
    for (unsigned long i = 0; now_ns() < stop; i++) {
        char value[32];
        snprintf(value, sizeof(value), "/item/%lu", i % 3000);
        baton_ctx_set(endpoint, value);
        burn_until(now_ns() + 200000);
    }
    baton_ctx_clear();
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: threadctx cpu|offcpu|garbage|many|plain SECONDS, or setcost N\n");
        return 2;
    }
    double seconds = atof(argv[2]);
    if (!strcmp(argv[1], "cpu"))
        pattern(seconds, 0);
    else if (!strcmp(argv[1], "offcpu"))
        pattern(seconds, 1);
    else if (!strcmp(argv[1], "garbage"))
        garbage(seconds);
    else if (!strcmp(argv[1], "many"))
        many(seconds);
    else if (!strcmp(argv[1], "plain"))
        plain(seconds);
    else if (!strcmp(argv[1], "setcost"))
        setcost((unsigned long)seconds);
    else if (!strcmp(argv[1], "alloc"))
        alloc_rounds(seconds);
    else
        return 2;
    return 0;
}
