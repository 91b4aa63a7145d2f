"""Thread context from Python, with a known truth: 3 of every 4 slices of 5 ms run with
endpoint=/a, the 4th with endpoint=/b (and a fixed trace).

    python3 threadctx.py cpu|offcpu SECONDS

Finds Baton's Python helper in helpers/python of the repository (or on PYTHONPATH), and its C
library through BATON_THREADCTX_LIB."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../helpers/python"))
import baton_threadctx as ctx  # noqa: E402

SLICE = 0.005
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
NONE_T = "0" * 32
NONE_S = "0" * 16


def burn(end):
    x = 0
    while time.monotonic() < end:
        for i in range(200):
            x += i * 7
    return x


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    start = time.monotonic()
    i = 0
    while True:
        end = start + (i + 1) * SLICE
        if end > start + seconds:
            break
        if i % 4 == 3:
            ctx.set("endpoint", "/b")
            ctx.set_trace(TRACE, SPAN)
        else:
            ctx.set("endpoint", "/a")
            ctx.set_trace(NONE_T, NONE_S, 0)
        if mode == "offcpu":
            time.sleep(max(0.0, end - time.monotonic()))
        else:
            burn(end)
        i += 1
    ctx.clear()


if __name__ == "__main__":
    main()
