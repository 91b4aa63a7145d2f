/* A fake libcuda.so.1 for Baton's tests: the driver entry points the GPU profilers probe, with
 * the real names and signatures (cuMemAlloc_v2 and cuMemFree_v2 as cuda.h maps them), doing no
 * GPU work. Function handles name the function they were got for. */
#include <stdlib.h>
#include <string.h>

#include "cuda_api.h"

struct CUfunc_st {
    char name[128];
};
struct CUmod_st {
    int unused;
};

static unsigned long long next_ptr = 0x7d0000000000ULL;
static unsigned long long next_stream = 0x6000;

CUresult cuInit(unsigned int flags)
{
    (void)flags;
    return 0;
}

CUresult cuDeviceGet(int *device, int ordinal)
{
    *device = ordinal;
    return ordinal == 0 ? 0 : 101; /* CUDA_ERROR_INVALID_DEVICE */
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, int dev)
{
    (void)flags, (void)dev;
    *pctx = (CUcontext)0x1000;
    return 0;
}

CUresult cuCtxSynchronize(void)
{
    return 0;
}

CUresult cuModuleLoadData(CUmodule *module, const void *image)
{
    (void)image;
    *module = calloc(1, sizeof(struct CUmod_st));
    return *module ? 0 : 2;
}

CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    if (!hfunc || !hmod || !name)
        return 1;
    struct CUfunc_st *f = calloc(1, sizeof(*f));
    if (!f)
        return 2;
    strncpy(f->name, name, sizeof(f->name) - 1);
    *hfunc = f;
    return 0;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                        unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                        unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                        void **kernelParams, void **extra)
{
    (void)gridDimY, (void)gridDimZ, (void)blockDimY, (void)blockDimZ, (void)sharedMemBytes;
    (void)hStream, (void)kernelParams, (void)extra;
    return f && gridDimX && blockDimX ? 0 : 1;
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                          void **extra)
{
    (void)kernelParams, (void)extra;
    return config && f ? 0 : 1;
}

CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
{
    (void)hStream;
    return hGraphExec ? 0 : 1;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    if (!dptr || bytesize == 0)
        return 1;
    *dptr = next_ptr;
    next_ptr += (bytesize + 0xfff) & ~0xfffULL;
    return 0;
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    return dptr ? 0 : 1;
}

CUresult cuStreamCreate(CUstream *phStream, unsigned int flags)
{
    (void)flags;
    *phStream = (CUstream)next_stream;
    next_stream += 0x10;
    return 0;
}
