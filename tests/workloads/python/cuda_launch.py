"""Launches a "kernel" N times through the CUDA runtime from Python functions, with ctypes, as
PyTorch launches from Python: main -> train_step -> forward -> launch. Usage:
cuda_launch.py LIBCUDART N [LINGER_SECONDS]"""
import ctypes
import sys
import time


class Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


cudart = ctypes.CDLL(sys.argv[1])
cudart.cudaLaunchKernel.argtypes = [
    ctypes.c_void_p, Dim3, Dim3, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
cudart.cudaLaunchKernel.restype = ctypes.c_int
# The "kernel": any function of the process stands for its host stub.
KERNEL = ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value


def launch():
    if cudart.cudaLaunchKernel(KERNEL, Dim3(16, 1, 1), Dim3(64, 1, 1), None, 0, None) != 0:
        raise SystemExit("launch failed")


def forward():
    launch()


def train_step():
    forward()


def main():
    for _ in range(int(sys.argv[2])):
        train_step()
    if len(sys.argv) > 3:
        time.sleep(float(sys.argv[3]))


main()
