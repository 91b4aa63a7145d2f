/* Lock workload: waits argv[1] seconds (default 0), then two threads take one mutex in turn,
 * each holding it for 100 ms of sleep, 5 times each, so that the other waits on it: about
 * 0.9 s of waiting in total (the first taker does not wait, every later turn waits about
 * 100 ms). Built with -pthread. */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t start;

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

__attribute__((noinline)) void hold_lock(void) {
    pthread_mutex_lock(&lock);
    nap_ms(100);
    pthread_mutex_unlock(&lock);
    /* Let the other thread in. */
    nap_ms(1);
}

static void *worker(void *arg) {
    (void)arg;
    pthread_barrier_wait(&start);
    for (int i = 0; i < 5; i++) hold_lock();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) usleep((useconds_t)(atof(argv[1]) * 1e6));
    pthread_t a, b;
    pthread_barrier_init(&start, NULL, 2);
    pthread_create(&a, NULL, worker, NULL);
    pthread_create(&b, NULL, worker, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
