// SPDX-License-Identifier: GPL-2.0
// Baton call-count profiler: one uprobe per chosen function, its index in the attach cookie.
// Calls are counted per (process, thread, function, user stack) in one of two buffers, as the
// CPU profiler does. With latency on, a uretprobe per function measures each call and counts it
// in a power-of-two histogram per (process, function).
#include "stats.h"
enum stat_index {
    STATS_HEAD(STAT_CALLS),
    STAT_RETURNS = 3,
    STAT_NO_ENTRY = 4,     // returns whose entry was not seen (attached mid-call, or evicted)
    STAT_FORKS_FOLLOWED = 5,
    STAT_COUNT = 6,
};
#include "base.h"
#include "threadctx.h"
#include <linux/ptrace.h>

struct call_key {
    __u32 pid;
    __u32 tid;
    __u32 function;
    __s32 user_stack;
    // The caller's return address, read from the top of the stack: at a function's entry the
    // frame-pointer walk of kernels before 6.12 starts at the caller's caller.
    __u64 caller;
    __u32 buffer;
    __u32 pad;
    char comm[TASK_COMM_LEN];
    // The function's address in the process, for a one-frame stack when stacks are off.
    __u64 ip;
    __u64 ctx; // the thread's context (threadctx.h), 0: none
};
_Static_assert(sizeof(struct call_key) == 64, "call_key is CallKey in Rust");

struct entry_key {
    __u32 tid;
    __u32 function;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct call_key);
    __type(value, __u64);
} counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct hist_key);
    __type(value, __u64);
} hists SEC(".maps");

// When each thread entered each function (a recursive call overwrites its outer call's start).
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct entry_key);
    __type(value, __u64);
} entered SEC(".maps");

STACK_MAP(stacks, 16384);

const volatile __u8 take_stacks = 1;
const volatile __u8 measure_latency = 0;
volatile __u32 active_buffer = 0;

SEC("uprobe")
int BPF_UPROBE(call_entry)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 function = (__u32)bpf_get_attach_cookie(ctx);
    struct call_key key = {};
    key.pid = id >> 32;
    key.tid = (__u32)id;
    key.function = function;
    key.buffer = active_buffer;
    key.user_stack = -1;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    key.ctx = thread_ctx(key.pid);
    if (take_stacks) {
        key.user_stack = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
        if (key.user_stack < 0)
            bump(STAT_USTACK_FAILED);
        bpf_probe_read_user(&key.caller, sizeof(key.caller), (void *)PT_REGS_SP(ctx));
    } else {
        key.ip = PT_REGS_IP(ctx);
    }
    if (add_u64(&counts, &key, 1) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_CALLS);
    if (measure_latency) {
        struct entry_key ek = {.tid = (__u32)id, .function = function};
        __u64 now = bpf_ktime_get_ns();
        bpf_map_update_elem(&entered, &ek, &now, BPF_ANY);
    }
    return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(call_return)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct entry_key ek = {.tid = (__u32)id, .function = (__u32)bpf_get_attach_cookie(ctx)};
    __u64 *start = bpf_map_lookup_elem(&entered, &ek);
    if (!start) {
        bump(STAT_NO_ENTRY);
        return 0;
    }
    __u64 delta = bpf_ktime_get_ns() - *start;
    bpf_map_delete_elem(&entered, &ek);
    struct hist_key hk = {
        .pid = id >> 32, .kind = ek.function, .bucket = log2_bucket(delta),
        .buffer = active_buffer};
    if (add_u64(&hists, &hk, 1) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_RETURNS);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
