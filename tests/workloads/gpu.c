/* A CUDA program of known truth for Baton's GPU profilers, linked against the real libraries or
 * Baton's fakes (tests/workloads/fakecuda). From known call chains it:
 *   - launches matmul_kernel N times through cudaLaunchKernel (grid 4x2x1, block 128x1x1, on
 *     stream A): main > train_step > forward_pass > launch_matmul;
 *   - launches softmax_kernel N/2 times through cuLaunchKernel (grid 8x1x1, block 256x1x1, on
 *     stream B): main > decode_loop > launch_softmax;
 *   - launches layernorm_kernel 5 times through cuLaunchKernelEx (grid 2x2x2, block 32x4x1,
 *     stream B): main > launch_ex;
 *   - replays a graph 3 times through cudaGraphLaunch and 2 times through cuGraphLaunch;
 *   - allocates 3 x 1 MiB with cudaMalloc in load_weights and frees one (2 MiB stay live), and
 *     5 x 4 KiB with cuMemAlloc in make_scratch, all freed.
 * It prints the streams' handles and the launch loops' time on stderr, then lingers for LINGER
 * seconds.
 * Usage: gpu N [LINGER] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "fakecuda/cuda_api.h"

#define NOINLINE __attribute__((noinline))

/* The kernels' host stubs, named as nvcc names them (Itanium-mangled C++). */
NOINLINE void matmul_kernel(float *out, int n) __asm__("_Z13matmul_kernelPfi");
NOINLINE void matmul_kernel(float *out, int n)
{
    if (out)
        out[0] = (float)n;
}

static cudaStream_t stream_a;
static CUstream stream_b;
static CUfunction softmax, layernorm;
volatile int sink;

NOINLINE static void launch_matmul(int i)
{
    dim3 grid = {4, 2, 1}, block = {128, 1, 1};
    void *args[2] = {0, &i};
    if (cudaLaunchKernel((const void *)matmul_kernel, grid, block, args, 0, stream_a) != 0)
        abort();
    sink++;
}

NOINLINE static void forward_pass(int i)
{
    launch_matmul(i);
    sink++;
}

NOINLINE static void train_step(int i)
{
    forward_pass(i);
    sink++;
}

NOINLINE static void launch_softmax(void)
{
    if (cuLaunchKernel(softmax, 8, 1, 1, 256, 1, 1, 0, stream_b, 0, 0) != 0)
        abort();
    sink++;
}

NOINLINE static void decode_loop(int n)
{
    for (int i = 0; i < n; i++)
        launch_softmax();
    sink++;
}

NOINLINE static void launch_ex(void)
{
    CUlaunchConfig c = {2, 2, 2, 32, 4, 1, 0, stream_b, 0, 0};
    if (cuLaunchKernelEx(&c, layernorm, 0, 0) != 0)
        abort();
    sink++;
}

NOINLINE static void replay_graph(void)
{
    for (int i = 0; i < 3; i++)
        if (cudaGraphLaunch((cudaGraphExec_t)0x9000, stream_a) != 0)
            abort();
    for (int i = 0; i < 2; i++)
        if (cuGraphLaunch((CUgraphExec)0x9100, stream_b) != 0)
            abort();
    sink++;
}

NOINLINE static void load_weights(void)
{
    void *p[3];
    for (int i = 0; i < 3; i++)
        if (cudaMalloc(&p[i], 1 << 20) != 0)
            abort();
    if (cudaFree(p[1]) != 0)
        abort();
    sink++;
}

NOINLINE static void make_scratch(void)
{
    CUdeviceptr p[5];
    for (int i = 0; i < 5; i++)
        if (cuMemAlloc_v2(&p[i], 4096) != 0)
            abort();
    for (int i = 0; i < 5; i++)
        if (cuMemFree_v2(p[i]) != 0)
            abort();
    sink++;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    int linger = argc > 2 ? atoi(argv[2]) : 0;
    CUmodule mod;
    if (cuInit(0) != 0 || cuModuleLoadData(&mod, "fake image") != 0 ||
        cuModuleGetFunction(&softmax, mod, "_Z14softmax_kernelPKfPfi") != 0 ||
        cuModuleGetFunction(&layernorm, mod, "layernorm_kernel") != 0)
        abort();
    if (cudaStreamCreate(&stream_a) != 0 || cuStreamCreate(&stream_b, 0) != 0)
        abort();
    fprintf(stderr, "stream_a %p\nstream_b %p\n", (void *)stream_a, (void *)stream_b);
    load_weights();
    make_scratch();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++)
        train_step(i);
    decode_loop(n / 2);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "launch loops: %d launches in %.6f s\n", n + n / 2,
            (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    for (int i = 0; i < 5; i++)
        launch_ex();
    replay_graph();
    if (linger > 0)
        sleep(linger);
    return 0;
}
