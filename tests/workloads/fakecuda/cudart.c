/* A fake libcudart.so.12 for Baton's tests: the runtime entry points the GPU profilers probe,
 * with the real names and signatures, doing no GPU work. Like a runtime, it calls the driver
 * (the fake libcuda.so.1 it links) for launches, allocations and frees, so a test sees that a
 * launch or allocation is counted once, not again in the driver. */
#include "cuda_api.h"

static unsigned long long next_stream = 0x5000;

__attribute__((noinline)) cudaError_t cudaLaunchKernel(const void *func, dim3 gridDim,
                                                       dim3 blockDim, void **args,
                                                       size_t sharedMem, cudaStream_t stream)
{
    if (!func || gridDim.x == 0 || blockDim.x == 0)
        return 1; /* cudaErrorInvalidValue */
    return cuLaunchKernel((CUfunction)func, gridDim.x, gridDim.y, gridDim.z, blockDim.x,
                          blockDim.y, blockDim.z, (unsigned int)sharedMem, (CUstream)stream, args,
                          0);
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream)
{
    if (!graphExec)
        return 1;
    return cuGraphLaunch((CUgraphExec)graphExec, (CUstream)stream);
}

cudaError_t cudaMalloc(void **devPtr, size_t size)
{
    if (!devPtr || size == 0)
        return 1;
    CUdeviceptr p = 0;
    CUresult r = cuMemAlloc_v2(&p, size);
    *devPtr = (void *)p;
    return r;
}

cudaError_t cudaFree(void *devPtr)
{
    return devPtr ? cuMemFree_v2((CUdeviceptr)devPtr) : 0;
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream)
{
    *pStream = (cudaStream_t)next_stream;
    next_stream += 0x10;
    return 0;
}
