/* The GPU check's workload (scripts/gpu-check.sh): drives a real NVIDIA driver through
 * libcuda.so.1. It loads a small PTX kernel with cuModuleLoadData and, from a known chain
 * (main > run_model > launch_spin > cuLaunchKernel), launches it N times on one stream; it
 * allocates 3 x 1 MiB of device memory (alloc_buffers > cuMemAlloc_v2) and frees one; then it
 * keeps the GPU busy for BUSY seconds and exits. It prints how long the N launches took.
 * Usage: gpu-check N BUSY_SECONDS */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../tests/workloads/fakecuda/cuda_api.h"

typedef int CUdevice;
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev);
CUresult cuCtxSynchronize(void);

#define NOINLINE __attribute__((noinline))
#define CHECK(call)                                                                            \
    do {                                                                                       \
        CUresult r_ = (call);                                                                  \
        if (r_ != 0) {                                                                         \
            fprintf(stderr, "%s failed: CUDA error %d\n", #call, r_);                          \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

/* out[thread] = the sum of 0..iters-1: a loop that keeps the SMs busy. */
static const char PTX[] =
    ".version 7.0\n"
    ".target sm_52\n"
    ".address_size 64\n"
    ".visible .entry baton_spin(.param .u64 out, .param .u32 iters)\n"
    "{\n"
    "  .reg .pred %p;\n"
    "  .reg .b32 %r<5>;\n"
    "  .reg .b64 %rd<4>;\n"
    "  ld.param.u64 %rd1, [out];\n"
    "  ld.param.u32 %r1, [iters];\n"
    "  mov.u32 %r2, 0;\n"
    "  mov.u32 %r3, 0;\n"
    "LOOP:\n"
    "  add.u32 %r3, %r3, %r2;\n"
    "  add.u32 %r2, %r2, 1;\n"
    "  setp.lt.u32 %p, %r2, %r1;\n"
    "  @%p bra LOOP;\n"
    "  mov.u32 %r4, %tid.x;\n"
    "  cvta.to.global.u64 %rd2, %rd1;\n"
    "  mul.wide.u32 %rd3, %r4, 4;\n"
    "  add.s64 %rd2, %rd2, %rd3;\n"
    "  st.global.u32 [%rd2], %r3;\n"
    "  ret;\n"
    "}\n";

static CUfunction spin;
static CUstream stream;
static CUdeviceptr out;
volatile int sink;

NOINLINE static void launch_spin(unsigned int iters)
{
    void *params[] = {&out, &iters};
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 64, 1, 1, 0, stream, params, 0));
    sink++;
}

NOINLINE static void run_model(int n, unsigned int iters)
{
    for (int i = 0; i < n; i++)
        launch_spin(iters);
    sink++;
}

NOINLINE static void alloc_buffers(void)
{
    CUdeviceptr p[3];
    for (int i = 0; i < 3; i++)
        CHECK(cuMemAlloc_v2(&p[i], 1 << 20));
    CHECK(cuMemFree_v2(p[1]));
    sink++;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    double busy = argc > 2 ? atof(argv[2]) : 0;
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuCtxCreate_v2(&ctx, 0, dev));
    CHECK(cuModuleLoadData(&mod, PTX));
    CHECK(cuModuleGetFunction(&spin, mod, "baton_spin"));
    CHECK(cuStreamCreate(&stream, 0));
    CHECK(cuMemAlloc_v2(&out, 64 * sizeof(unsigned int)));
    alloc_buffers();
    double t0 = now();
    run_model(n, 1);
    double t1 = now();
    CHECK(cuCtxSynchronize());
    fprintf(stderr, "launch loop: %d launches in %.6f s\n", n, t1 - t0);
    /* Busy: long kernels until BUSY seconds have passed. */
    double end = now() + busy;
    while (now() < end) {
        launch_spin(1u << 22);
        CHECK(cuCtxSynchronize());
    }
    return 0;
}
