# CPU workload with a known chain: top_a -> mid_b -> leaf_c, whose whole loop is one line (HOT).
# Runs argv[1] seconds (default 3). Valid Python 3.8 to 3.13.
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
    while time.time() < end:
        mid_b(20000)


top_a(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
