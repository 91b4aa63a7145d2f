# Mixed stacks: compress_loop spends its time in zlib's C code (libz's deflate), encode_loop in
# the json module's C encoder (_json, whose static functions are named only from Debian's
# python3.11-dbg debug files). They alternate for argv[1] seconds (default 3).
import json
import os
import sys
import time

import zlib

DATA = os.urandom(1 << 14) * 16
DOC = [{"id": i, "name": "item %d" % i, "tags": ["a", "b", "c"], "score": i * 0.5} for i in range(2000)]


def compress_loop(n):
    total = 0
    for _ in range(n):
        total += len(zlib.compress(DATA, 6))
    return total


def encode_loop(n):
    total = 0
    for _ in range(n):
        total += len(json.dumps(DOC))
    return total


def main(seconds):
    end = time.time() + seconds
    while time.time() < end:
        compress_loop(10)
        encode_loop(4)


main(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
