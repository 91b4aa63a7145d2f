"""Baton thread context for Python: labels a thread publishes about the work it is doing,
which Baton reads at every sample and event and stores with them.

    import baton_threadctx as ctx

    with ctx.labels(endpoint="/checkout"):
        handle()                      # samples taken here carry endpoint=/checkout

    ctx.set_trace("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")

Labels belong to the calling OS thread (Python threads are OS threads). The module wraps the
C library `libbaton_threadctx.so` (helpers/c in Baton's repository), found through
`BATON_THREADCTX_LIB`, next to this file, or in /usr/local/lib/baton. Each call costs about a
microsecond; set labels per request, not per line.
"""

import contextlib
import ctypes
import os

__all__ = ["key", "set", "unset", "clear", "set_trace", "labels", "library_path"]


def library_path():
    """Where the C library is loaded from."""
    env = os.environ.get("BATON_THREADCTX_LIB")
    if env:
        return env
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libbaton_threadctx.so")
    if os.path.exists(here):
        return here
    return "/usr/local/lib/baton/libbaton_threadctx.so"


_lib = ctypes.CDLL(library_path())
_lib.baton_ctx_key.argtypes = [ctypes.c_char_p]
_lib.baton_ctx_key.restype = ctypes.c_int
_lib.baton_ctx_set_n.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
_lib.baton_ctx_set_n.restype = ctypes.c_int
_lib.baton_ctx_unset.argtypes = [ctypes.c_int]
_lib.baton_ctx_unset.restype = None
_lib.baton_ctx_set_trace.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ubyte]
_lib.baton_ctx_set_trace.restype = None
_lib.baton_ctx_clear.argtypes = []
_lib.baton_ctx_clear.restype = None

_keys = {}


def key(name):
    """The index of label `name` in this process, registered the first time."""
    idx = _keys.get(name)
    if idx is None:
        idx = _lib.baton_ctx_key(name.encode())
        if idx < 0:
            raise ValueError("cannot register label %r (255 at most, 1-31 bytes each)" % name)
        _keys[name] = idx
    return idx


def set(name, value):
    """Sets label `name` of the calling thread to `value` (a str)."""
    data = value.encode() if isinstance(value, str) else bytes(value)
    if _lib.baton_ctx_set_n(key(name), data, len(data)) != 0:
        raise ValueError("the thread's labels are full (640 bytes)")


def unset(name):
    """Removes label `name` from the calling thread."""
    _lib.baton_ctx_unset(key(name))


def clear():
    """Removes every label and the trace of the calling thread."""
    _lib.baton_ctx_clear()


def set_trace(trace_id, span_id, flags=1):
    """Sets the calling thread's trace and span IDs, as hex strings (32 and 16 digits)."""
    t, s = bytes.fromhex(trace_id), bytes.fromhex(span_id)
    if len(t) != 16 or len(s) != 8:
        raise ValueError("a trace ID is 16 bytes and a span ID 8")
    _lib.baton_ctx_set_trace(t, s, flags)


@contextlib.contextmanager
def labels(**values):
    """Sets labels for the duration of a `with` block, then removes them."""
    for k, v in values.items():
        set(k, v)
    try:
        yield
    finally:
        for k in values:
            unset(k)
