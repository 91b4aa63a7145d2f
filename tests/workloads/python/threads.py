# Two threads in different Python functions (spin_one, spin_two), plus a main thread that
# sleeps in wait_main (time.sleep: off CPU) and a function that allocates (alloc_here,
# 1 MiB bytearrays). argv[1]: seconds (default 3); argv[2]: "fork" to run the spinners in a forked
# child too.
import os
import sys
import threading
import time


def spin_one(end):
    x = 0
    while time.time() < end:
        for i in range(10000): x += i
    return x


def spin_two(end):
    x = 0
    while time.time() < end:
        for i in range(10000): x ^= i
    return x


def alloc_here(end):
    kept = []
    while time.time() < end:
        kept.append(bytearray(1 << 20))
        if len(kept) > 8:
            kept.clear()
        time.sleep(0.001)


def wait_main(end):
    while time.time() < end:
        time.sleep(0.2)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    if len(sys.argv) > 2 and sys.argv[2] == "fork":
        pid = os.fork()
        if pid == 0:
            spin_one(time.time() + seconds)
            os._exit(0)
        spin_two(time.time() + seconds)
        os.waitpid(pid, 0)
        return
    end = time.time() + seconds
    threads = [threading.Thread(target=f, args=(end,)) for f in (spin_one, spin_two, alloc_here)]
    for t in threads:
        t.start()
    wait_main(end)
    for t in threads:
        t.join()


main()
