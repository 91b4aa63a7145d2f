/* A fake libcudart.so.12 for Baton's tests: the runtime entry points the GPU profilers probe,
 * with the real names and signatures, doing no GPU work. Launches are counted (so a test can
 * compare with what Baton saw); device pointers come from a counter. */
#include "cuda_api.h"

static unsigned long long next_ptr = 0x7e0000000000ULL;
static unsigned long long next_stream = 0x5000;
volatile unsigned long long fake_cudart_launches;

__attribute__((noinline)) cudaError_t cudaLaunchKernel(const void *func, dim3 gridDim,
                                                       dim3 blockDim, void **args,
                                                       size_t sharedMem, cudaStream_t stream)
{
    (void)args;
    (void)sharedMem;
    if (!func || gridDim.x == 0 || blockDim.x == 0)
        return 1; /* cudaErrorInvalidValue */
    (void)stream;
    fake_cudart_launches++;
    return 0;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream)
{
    (void)stream;
    if (!graphExec)
        return 1;
    fake_cudart_launches++;
    return 0;
}

cudaError_t cudaMalloc(void **devPtr, size_t size)
{
    if (!devPtr || size == 0)
        return 1;
    *devPtr = (void *)next_ptr;
    next_ptr += (size + 0xfff) & ~0xfffULL;
    return 0;
}

cudaError_t cudaFree(void *devPtr)
{
    (void)devPtr;
    return 0;
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream)
{
    *pStream = (cudaStream_t)next_stream;
    next_stream += 0x10;
    return 0;
}
