// SPDX-License-Identifier: GPL-2.0
// Baton GPU profilers (cuda, gpumem): uprobes on the CUDA runtime's and driver's entry points.
//
// cuda: each kernel launch (cudaLaunchKernel, cuLaunchKernel, cuLaunchKernelEx,
// cudaGraphLaunch, cuGraphLaunch) is described by (API, kernel, grid, block, stream); a
// description gets a small id the first time it is seen (`descs`), and launches are counted in
// rows of common.h with that id as their kind, per thread and user stack. Each thread records at
// most `max_rate` launches a second in full; past that, one launch in RATE_KEEP is recorded and
// weighs RATE_KEEP, and the others are counted (STAT_RATE_LIMITED).
//
// The handles cuLaunchKernel takes are named from cuModuleGetFunction, whose return is probed.
// A driver call made from inside a runtime call on the same thread (the runtime calling the
// driver) is not counted twice. A runtime launch remembers its stack pointer and return address;
// the first driver launch after it, deeper on the stack (or at the same depth, a tail call)
// while that return address is still in place, is inside it.
// (A uretprobe would say when the runtime call returns, but it costs a second trap per launch.)
// cudaMalloc, whose return is probed anyway, sets `in_runtime` until it returns.
//
// gpumem: cudaMalloc and cuMemAlloc (entry and return) and cudaFree and cuMemFree. An allocation
// is counted in a row (bytes, count) whose kind is the id of its (API, caller), and kept in
// `live` until it is freed.
#include "stats.h"
enum stat_index {
    STATS_HEAD(STAT_EVENTS),
    STAT_NO_STORAGE = 3,
    STAT_FORKS_FOLLOWED = 4,
    STAT_RATE_LIMITED = 5,
    STAT_NESTED = 6,        // driver calls inside runtime calls, not counted again
    STAT_DESCS_FULL = 7,    // launches whose description found no id (counted without one)
    STAT_FREE_UNKNOWN = 8,  // frees of pointers not allocated while probed
    STAT_FAILED_CALLS = 9,  // allocations that returned an error
    STAT_COUNT = 10,
};
#include "common.h"
#include <linux/ptrace.h>

#define RATE_KEEP 16
#define NAME_LEN 120

// What the attach cookie says a probe is.
enum gpu_api {
    API_CUDA_LAUNCH_KERNEL = 0,
    API_CU_LAUNCH_KERNEL = 1,
    API_CU_LAUNCH_KERNEL_EX = 2,
    API_CUDA_GRAPH_LAUNCH = 3,
    API_CU_GRAPH_LAUNCH = 4,
    API_CUDA_MALLOC = 5,
    API_CU_MEM_ALLOC = 6,
    API_CUDA_FREE = 7,
    API_CU_MEM_FREE = 8,
};

// A call's description; `func` is the kernel's host stub (runtime), its CUfunction handle
// (driver) or the graph's executable handle (graphs), 0 for allocations. `caller` is the
// return address at the entry point: the kernel's frame-pointer walk from a function's first
// instruction skips the caller unless that instruction is `push %rbp`, so user space adds it.
struct launch_desc {
    __u32 pid;
    __u32 api;
    __u64 func;
    __u32 grid[3];
    __u32 block[3];
    __u64 stream;
    __u64 caller;
};
_Static_assert(sizeof(struct launch_desc) == 56, "launch_desc is LaunchDesc in Rust");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct launch_desc);
    __type(value, __u32);
} descs SEC(".maps");

// The ids in use: an id is claimed by inserting it here (BPF_NOEXIST), which no other CPU can
// do at the same time, so ids are unique without atomic counters.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, __u8);
} desc_ids SEC(".maps");

// A driver function handle's name, from cuModuleGetFunction.
struct handle_key {
    __u32 pid;
    __u32 pad;
    __u64 handle;
};
struct handle_name {
    char name[NAME_LEN];
};
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct handle_key);
    __type(value, struct handle_name);
} handles SEC(".maps");

// A device allocation still live.
struct live_key {
    __u32 pid;
    __u32 pad;
    __u64 ptr;
};
struct live_value {
    __u64 size;
    __u32 tid;
    __s32 user_stack;
    __u32 desc;
    __u32 pad;
    __u64 cgroup_id;
    char comm[TASK_COMM_LEN];
};
_Static_assert(sizeof(struct live_value) == 48, "live_value is LiveValue in Rust");
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct live_key);
    __type(value, struct live_value);
} live SEC(".maps");

// Per thread: the rate window, whether a runtime call is in progress, and the call whose
// return is awaited (an allocation, or cuModuleGetFunction).
struct gpu_thread {
    __u64 second;
    __u32 in_window;
    __u32 in_runtime;
    __u64 rt_sp;     // the last runtime launch's stack pointer at entry
    __u64 rt_ret;    // and its return address
    __u64 out_ptr;
    __u64 size;
    __u64 name_ptr;
    __s32 user_stack;
    __u32 api;
    __u64 caller;
};
TASK_STORAGE(threads, struct gpu_thread);

const volatile __u32 max_rate = 2000;

// The return address at a function's entry.
static __always_inline __u64 caller_of(struct pt_regs *ctx)
{
    __u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)PT_REGS_SP(ctx));
    return v;
}

static __always_inline __u64 stack_arg(struct pt_regs *ctx, int n)
{
    // At a function's entry the return address is at sp; argument 7 is above it.
    __u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8 * (n - 6)));
    return v;
}

// The weight the current launch is recorded with: 1 within the thread's rate, RATE_KEEP for
// the launches kept past it, 0 for those skipped (counted).
static __always_inline __u32 rate_weight(struct gpu_thread *t)
{
    if (max_rate == 0)
        return 1;
    __u64 second = bpf_ktime_get_ns() / 1000000000ULL;
    if (t->second != second) {
        t->second = second;
        t->in_window = 0;
    }
    if (t->in_window < max_rate) {
        t->in_window++;
        return 1;
    }
    if (bpf_get_prandom_u32() % RATE_KEEP == 0)
        return RATE_KEEP;
    bump(STAT_RATE_LIMITED);
    return 0;
}

// The id of description `d`, assigned the first time it is seen (a random id, claimed in
// `desc_ids`); 0 when none could be had.
static __always_inline __u32 desc_id(struct launch_desc *d)
{
    __u32 *id = bpf_map_lookup_elem(&descs, d);
    if (id)
        return *id;
    __u32 fresh = 0;
    __u8 one = 1;
    for (int i = 0; i < 4; i++) {
        __u32 candidate = bpf_get_prandom_u32() | 1;
        if (bpf_map_update_elem(&desc_ids, &candidate, &one, BPF_NOEXIST) == 0) {
            fresh = candidate;
            break;
        }
    }
    if (fresh == 0) {
        bump(STAT_DESCS_FULL);
        return 0;
    }
    if (bpf_map_update_elem(&descs, d, &fresh, BPF_NOEXIST) == 0)
        return fresh;
    // Another CPU described it first (or the map is full): give the id back.
    bpf_map_delete_elem(&desc_ids, &fresh);
    id = bpf_map_lookup_elem(&descs, d);
    if (id)
        return *id;
    bump(STAT_DESCS_FULL);
    return 0;
}

static __always_inline struct gpu_thread *thread_of_target(void)
{
    return target_start(&threads, STAT_NO_STORAGE);
}

// Counts one launch described by `d` (pid and api filled in here).
static __always_inline int count_launch(struct pt_regs *ctx, struct launch_desc *d, __u32 api,
                                        int runtime)
{
    struct gpu_thread *t = thread_of_target();
    if (!t)
        return 0;
    __u64 sp = PT_REGS_SP(ctx);
    if (runtime) {
        t->rt_sp = sp;
        t->rt_ret = caller_of(ctx);
    } else if (t->rt_sp) {
        // Only the first driver launch after a runtime launch can be inside it.
        __u64 rt_sp = t->rt_sp, ret = 0;
        t->rt_sp = 0;
        // (Equal: the runtime jumped to the driver as a tail call.)
        if (sp <= rt_sp && bpf_probe_read_user(&ret, sizeof(ret), (void *)rt_sp) == 0 &&
            ret == t->rt_ret) {
            bump(STAT_NESTED);
            return 0;
        }
    }
    __u32 weight = rate_weight(t);
    if (weight == 0)
        return 0;
    d->pid = bpf_get_current_pid_tgid() >> 32;
    d->api = api;
    d->caller = caller_of(ctx);
    struct row_key key = {};
    current_row_key(&key, desc_id(d));
    __u64 cookie = bpf_ktime_get_ns();
    __u32 copied = 0;
    // A Python process (PyTorch) launches from Python: its stack is copied whatever the code,
    // so that user space adds the interpreter's frames (interp.h) to the unwound one.
    if (bpf_map_lookup_elem(&interp_procs, &d->pid))
        copied = copy_user_stack_if(bpf_get_current_task_btf(), d->pid, key.tid, cookie, 1);
    if (!copied)
        key.user_stack = current_user_stack(ctx, &stacks, cookie, &copied);
    if (count_ended(&key, copied, cookie, weight, 0, 0) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_EVENTS);
    return 0;
}

SEC("uprobe")
int BPF_UPROBE(cuda_launch_kernel)
{
    // (func, dim3 grid in two registers, dim3 block in two, args, sharedMem, stream)
    struct launch_desc d = {};
    d.func = PT_REGS_PARM1(ctx);
    __u64 g = PT_REGS_PARM2(ctx), b = PT_REGS_PARM4(ctx);
    d.grid[0] = (__u32)g;
    d.grid[1] = g >> 32;
    d.grid[2] = (__u32)PT_REGS_PARM3(ctx);
    d.block[0] = (__u32)b;
    d.block[1] = b >> 32;
    d.block[2] = (__u32)PT_REGS_PARM5(ctx);
    d.stream = stack_arg(ctx, 8);
    return count_launch(ctx, &d, API_CUDA_LAUNCH_KERNEL, 1);
}

SEC("uprobe")
int BPF_UPROBE(cu_launch_kernel)
{
    // (f, gx, gy, gz, bx, by, bz, sharedMem, stream, params, extra)
    struct launch_desc d = {};
    d.func = PT_REGS_PARM1(ctx);
    d.grid[0] = (__u32)PT_REGS_PARM2(ctx);
    d.grid[1] = (__u32)PT_REGS_PARM3(ctx);
    d.grid[2] = (__u32)PT_REGS_PARM4(ctx);
    d.block[0] = (__u32)PT_REGS_PARM5(ctx);
    d.block[1] = (__u32)PT_REGS_PARM6(ctx);
    d.block[2] = (__u32)stack_arg(ctx, 7);
    d.stream = stack_arg(ctx, 9);
    return count_launch(ctx, &d, API_CU_LAUNCH_KERNEL, 0);
}

// CUlaunchConfig's head: the dimensions, shared memory, then the stream at offset 32.
struct launch_config {
    __u32 grid[3];
    __u32 block[3];
    __u32 shared;
    __u32 pad;
    __u64 stream;
};

SEC("uprobe")
int BPF_UPROBE(cu_launch_kernel_ex)
{
    // (const CUlaunchConfig *config, f, params, extra)
    struct launch_config c = {};
    bpf_probe_read_user(&c, sizeof(c), (void *)PT_REGS_PARM1(ctx));
    struct launch_desc d = {};
    d.func = PT_REGS_PARM2(ctx);
    __builtin_memcpy(d.grid, c.grid, sizeof(d.grid));
    __builtin_memcpy(d.block, c.block, sizeof(d.block));
    d.stream = c.stream;
    return count_launch(ctx, &d, API_CU_LAUNCH_KERNEL_EX, 0);
}

SEC("uprobe")
int BPF_UPROBE(graph_launch)
{
    // (exec, stream), runtime or driver as the cookie says
    __u32 api = (__u32)bpf_get_attach_cookie(ctx);
    struct launch_desc d = {};
    d.func = PT_REGS_PARM1(ctx);
    d.stream = PT_REGS_PARM2(ctx);
    return count_launch(ctx, &d, api, api == API_CUDA_GRAPH_LAUNCH);
}

SEC("uprobe")
int BPF_UPROBE(get_function)
{
    // (CUfunction *hfunc, CUmodule hmod, const char *name)
    struct gpu_thread *t = thread_of_target();
    if (!t)
        return 0;
    t->out_ptr = PT_REGS_PARM1(ctx);
    t->name_ptr = PT_REGS_PARM3(ctx);
    return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(get_function_return, int ret)
{
    struct gpu_thread *t = bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0, 0);
    if (!t || !t->out_ptr || !t->name_ptr)
        return 0;
    __u64 out = t->out_ptr, name = t->name_ptr;
    t->out_ptr = 0;
    t->name_ptr = 0;
    if (ret != 0)
        return 0;
    struct handle_key k = {.pid = bpf_get_current_pid_tgid() >> 32};
    if (bpf_probe_read_user(&k.handle, sizeof(k.handle), (void *)out) != 0)
        return 0;
    struct handle_name n = {};
    bpf_probe_read_user_str(n.name, sizeof(n.name), (void *)name);
    bpf_map_update_elem(&handles, &k, &n, BPF_ANY);
    return 0;
}

SEC("uprobe")
int BPF_UPROBE(mem_alloc)
{
    // (void **ptr or CUdeviceptr *ptr, size_t size)
    __u32 api = (__u32)bpf_get_attach_cookie(ctx);
    struct gpu_thread *t = thread_of_target();
    if (!t)
        return 0;
    if (api == API_CU_MEM_ALLOC && t->in_runtime) {
        bump(STAT_NESTED);
        return 0;
    }
    if (api == API_CUDA_MALLOC)
        t->in_runtime = 1;
    t->out_ptr = PT_REGS_PARM1(ctx);
    t->size = PT_REGS_PARM2(ctx);
    t->api = api;
    t->caller = caller_of(ctx);
    t->user_stack = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
    if (t->user_stack < 0)
        bump(STAT_USTACK_FAILED);
    return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(mem_alloc_return, int ret)
{
    struct gpu_thread *t = bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0, 0);
    if (!t)
        return 0;
    __u32 api = (__u32)bpf_get_attach_cookie(ctx);
    if (api == API_CUDA_MALLOC)
        t->in_runtime = 0;
    if (!t->out_ptr || t->api != api)
        return 0;
    __u64 out = t->out_ptr;
    t->out_ptr = 0;
    if (ret != 0) {
        bump(STAT_FAILED_CALLS);
        return 0;
    }
    struct live_key k = {.pid = bpf_get_current_pid_tgid() >> 32};
    if (bpf_probe_read_user(&k.ptr, sizeof(k.ptr), (void *)out) != 0 || k.ptr == 0)
        return 0;
    struct launch_desc d = {.pid = k.pid, .api = api, .caller = t->caller};
    struct row_key key = {};
    current_row_key(&key, desc_id(&d));
    key.user_stack = t->user_stack;
    struct live_value v = {.size = t->size, .tid = key.tid, .user_stack = t->user_stack,
                           .desc = key.kind, .cgroup_id = key.cgroup_id};
    __builtin_memcpy(v.comm, key.comm, sizeof(v.comm));
    if (bpf_map_update_elem(&live, &k, &v, BPF_ANY) != 0)
        bump(STAT_LOST_MAP_FULL);
    if (add_row(&key, 1, 0, t->size) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_EVENTS);
    return 0;
}

SEC("uprobe")
int BPF_UPROBE(mem_free)
{
    struct live_key k = {.pid = bpf_get_current_pid_tgid() >> 32, .ptr = PT_REGS_PARM1(ctx)};
    if (!is_target(k.pid) || k.ptr == 0)
        return 0;
    if (bpf_map_delete_elem(&live, &k) != 0)
        bump(STAT_FREE_UNKNOWN);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
