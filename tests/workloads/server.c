/* Request-latency workload: a server thread answers 40 requests a client thread sends over a
 * socketpair. Each request is handled between request_begin(id) and request_end(id) (also USDT
 * probes server:request__start and server:request__done, argument 1 the id):
 * - requests with id % 4 == 3 (10 of them) burn 50 ms of CPU in slow_work;
 * - the others (30) burn 3 ms of CPU in fast_work.
 * argv[1]: seconds to wait before the first request (default 0). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/sdt.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUESTS 40

static int fds[2];
volatile uint64_t sink;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void burn(double ms) {
    double until = now_ms() + ms;
    uint64_t x = sink;
    do {
        for (int i = 0; i < 20000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    } while (now_ms() < until);
    sink = x;
}

__attribute__((noinline)) void slow_work(void) { burn(50); }
__attribute__((noinline)) void fast_work(void) { burn(3); }
__attribute__((noinline)) void request_begin(uint64_t id) { sink += id; }
__attribute__((noinline)) void request_end(uint64_t id) { sink -= id; }

__attribute__((noinline)) void handle_request(uint64_t id) {
    request_begin(id);
    DTRACE_PROBE1(server, request__start, id);
    if (id % 4 == 3)
        slow_work();
    else
        fast_work();
    DTRACE_PROBE1(server, request__done, id);
    request_end(id);
}

static void *client(void *arg) {
    (void)arg;
    for (uint64_t id = 0; id < REQUESTS; id++) {
        uint64_t reply;
        if (write(fds[1], &id, sizeof id) != sizeof id) exit(1);
        if (read(fds[1], &reply, sizeof reply) != sizeof reply) exit(1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) usleep((useconds_t)(atof(argv[1]) * 1e6));
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return 1;
    pthread_t c;
    pthread_create(&c, NULL, client, NULL);
    for (int i = 0; i < REQUESTS; i++) {
        uint64_t id;
        if (read(fds[0], &id, sizeof id) != sizeof id) return 1;
        handle_request(id);
        if (write(fds[0], &id, sizeof id) != sizeof id) return 1;
    }
    pthread_join(c, NULL);
    return 0;
}
