/* dlopen workload: sleeps argv[2] seconds (default 0.5), then loads the library argv[1] and
 * spends argv[3] seconds (default 3) in its plugin_burn -> plugin_leaf, called from main through
 * call_plugin. The library is mapped only after the profiler first saw the process. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void call_plugin(void (*burn)(unsigned long)) {
    burn(2000000);
    /* Work after the call keeps it a real call (no tail call), so call_plugin stays on the stack. */
    (void)now();
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: dlopen LIB.so [DELAY] [SECONDS]\n");
        return 2;
    }
    double delay = argc > 2 ? atof(argv[2]) : 0.5, secs = argc > 3 ? atof(argv[3]) : 3.0;
    usleep((useconds_t)(delay * 1e6));
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    void (*burn)(unsigned long) = (void (*)(unsigned long))dlsym(lib, "plugin_burn");
    if (!burn) return 1;
    double end = now() + secs;
    while (now() < end) call_plugin(burn);
    return 0;
}
