/* A library the dlopen workload loads at run time: plugin_burn -> plugin_leaf burns the CPU. */
volatile unsigned long plugin_sink;

__attribute__((noinline)) void plugin_leaf(unsigned long n) {
    unsigned long x = plugin_sink;
    for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    plugin_sink = x;
}

__attribute__((noinline)) void plugin_burn(unsigned long n) {
    plugin_leaf(n);
    plugin_sink = plugin_sink + 1;
}
