/* A fake libnvidia-ml.so.1 for Baton's tests: the NVML calls Baton's nvml profiler makes, with
 * the real names and signatures, returning scripted values. The environment scripts them:
 * BATON_FAKE_NVML_DEVICES (default 1) devices, each reporting the process
 * BATON_FAKE_NVML_PID (if set) as running on it. Device i reports GPU utilisation 70+i %,
 * memory utilisation 41 % (device 0) or 0 % (the others: an idle memory bus, a reading of 0),
 * 12 GiB used of 80 GiB, 312 W, 64 C and an SM clock of 1755 MHz; the process uses 2 GiB, 58 %
 * of the SMs and 22 % of the memory bandwidth. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_api.h"

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7

static int initialised;

static unsigned int devices(void)
{
    const char *d = getenv("BATON_FAKE_NVML_DEVICES");
    return d ? (unsigned int)atoi(d) : 1;
}

static unsigned int fake_pid(void)
{
    const char *p = getenv("BATON_FAKE_NVML_PID");
    return p ? (unsigned int)atoi(p) : 0;
}

static long index_of(nvmlDevice_t d)
{
    long i = (long)d - 1;
    return i >= 0 && i < (long)devices() ? i : -1;
}

nvmlReturn_t nvmlInit_v2(void)
{
    initialised = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void)
{
    initialised = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    return result == NVML_SUCCESS ? "Success" : "Fake error";
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (!initialised)
        return NVML_ERROR_UNINITIALIZED;
    *count = devices();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (index >= devices())
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(long)(index + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    if (index_of(device) < 0 || length == 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, length, "Fake H100 %ld", index_of(device));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u)
{
    if (index_of(device) < 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = 70 + (unsigned int)index_of(device);
    u->memory = index_of(device) == 0 ? 41 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *m)
{
    if (index_of(device) < 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    m->total = 80ULL << 30;
    m->used = 12ULL << 30;
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    if (index_of(device) < 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    *power = 312000; /* milliwatts */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp)
{
    if (index_of(device) < 0 || sensorType != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    *temp = 64;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock)
{
    if (index_of(device) < 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    *clock = type == 1 ? 1755 : 2619; /* NVML_CLOCK_SM, else the memory clock */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos)
{
    if (index_of(device) < 0 || !infoCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = fake_pid() ? 1 : 0;
    if (*infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *infoCount = n;
    if (n) {
        memset(infos, 0, sizeof(*infos));
        infos[0].pid = fake_pid();
        infos[0].usedGpuMemory = 2ULL << 30;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount,
                                             unsigned long long lastSeenTimeStamp)
{
    (void)lastSeenTimeStamp;
    if (index_of(device) < 0 || !processSamplesCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = fake_pid() ? 1 : 0;
    if (n == 0)
        return NVML_ERROR_NOT_FOUND;
    if (!utilization || *processSamplesCount < n) {
        *processSamplesCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *processSamplesCount = n;
    memset(utilization, 0, sizeof(*utilization));
    utilization[0].pid = fake_pid();
    utilization[0].timeStamp = lastSeenTimeStamp + 1;
    utilization[0].smUtil = 58;
    utilization[0].memUtil = 22;
    return NVML_SUCCESS;
}
