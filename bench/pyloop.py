# Throughput workload for bench/python.sh: the chain top_a -> mid_b -> leaf_c of
# tests/workloads/python/hot.py, counting calls of mid_b for argv[1] seconds, then printing
# "ops_per_sec=N". Waits for argv[2] seconds first (time for a profiler to attach).
import sys
import time


def leaf_c(n):
    total = 0
    for i in range(n): total += i * i  # HOT
    return total


def mid_b(n):
    return leaf_c(n)


def top_a(seconds):
    end = time.time() + seconds
    calls = 0
    while time.time() < end:
        mid_b(2000)
        calls += 1
    return calls


time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
print("ops_per_sec=%d" % (top_a(seconds) / seconds))
