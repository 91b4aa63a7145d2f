/* Workloads for bench/profilers.sh, one per profiler, each printing ops_per_sec=N after running
 * for argv[2] seconds:
 *   malloc    malloc/free of 16..1039 bytes, 1,024 kept live at any time;
 *   calls     calls of a small function (about 50 ns of work);
 *   syscalls  getppid(2), the cheapest syscall;
 *   locks     two threads handing a turn to each other through a mutex and a condition
 *             variable, so every handoff is a futex wait and a wake (run it pinned to one CPU);
 *   io        4 KiB pwrite + fdatasync to argv[3] (a file on a block device);
 *   latency   requests of about 20 us between request_begin and request_end.
 * Usage: eventbench MODE SECONDS [FILE] */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;
static volatile int stop;
static double secs;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) uint64_t work(uint64_t x) {
    for (int i = 0; i < 20; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return x;
}
__attribute__((noinline)) void request_begin(uint64_t id) { sink += id; }
__attribute__((noinline)) void request_end(uint64_t id) { sink -= id; }

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turned = PTHREAD_COND_INITIALIZER;
static int turn;
static uint64_t handoffs;

static void *player(void *arg) {
    int me = (int)(intptr_t)arg;
    pthread_mutex_lock(&lock);
    while (!stop) {
        while (turn != me && !stop) pthread_cond_wait(&turned, &lock);
        turn = 1 - me;
        handoffs++;
        pthread_cond_signal(&turned);
    }
    pthread_cond_broadcast(&turned);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: eventbench MODE SECONDS [FILE]\n");
        return 2;
    }
    const char *mode = argv[1];
    secs = atof(argv[2]);
    double t0 = now(), end = t0 + secs;
    uint64_t ops = 0;
    if (!strcmp(mode, "malloc")) {
        static void *live[1024];
        uint64_t x = 1;
        while (now() < end) {
            for (int i = 0; i < 1000; i++) {
                x = x * 6364136223846793005ULL + 1442695040888963407ULL;
                int slot = (x >> 33) % 1024;
                free(live[slot]);
                size_t n = 16 + ((x >> 20) % 1024);
                live[slot] = malloc(n);
                ((char *)live[slot])[0] = 1;
            }
            ops += 1000;
        }
    } else if (!strcmp(mode, "calls")) {
        uint64_t x = 1;
        while (now() < end) {
            for (int i = 0; i < 1000; i++) x = work(x);
            ops += 1000;
        }
        sink = x;
    } else if (!strcmp(mode, "syscalls")) {
        while (now() < end) {
            for (int i = 0; i < 1000; i++) syscall(SYS_getppid);
            ops += 1000;
        }
    } else if (!strcmp(mode, "locks")) {
        pthread_t a, b;
        pthread_create(&a, NULL, player, (void *)0);
        pthread_create(&b, NULL, player, (void *)1);
        while (now() < end) usleep(10000);
        pthread_mutex_lock(&lock);
        stop = 1;
        pthread_cond_broadcast(&turned);
        pthread_mutex_unlock(&lock);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        ops = handoffs;
    } else if (!strcmp(mode, "io")) {
        if (argc < 4) return 2;
        int fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) return 1;
        static char buf[4096];
        memset(buf, 'x', sizeof buf);
        while (now() < end) {
            if (pwrite(fd, buf, sizeof buf, (ops % 256) * 4096) != sizeof buf) return 1;
            if (fdatasync(fd) != 0) return 1;
            ops++;
        }
        close(fd);
        unlink(argv[3]);
    } else if (!strcmp(mode, "latency")) {
        uint64_t x = 1;
        while (now() < end) {
            request_begin(ops);
            for (int i = 0; i < 400; i++) x = work(x);
            request_end(ops);
            ops++;
        }
        sink = x;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("ops_per_sec=%.0f\n", ops / (now() - t0));
    return 0;
}
