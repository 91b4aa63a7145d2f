// C++ workload for demangling: all its time is in baton_test::Spinner::spin(unsigned long),
// called from main. Runs for argv[1] seconds (default 2).
#include <chrono>
#include <cstdlib>

namespace baton_test {
struct Spinner {
    volatile unsigned long sink = 0;
    __attribute__((noinline)) void spin(unsigned long n) {
        unsigned long x = sink;
        for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
        sink = x;
    }
};
}  // namespace baton_test

int main(int argc, char **argv) {
    double secs = argc > 1 ? std::atof(argv[1]) : 2.0;
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
    baton_test::Spinner s;
    while (std::chrono::steady_clock::now() < end) s.spin(100000);
    return 0;
}
