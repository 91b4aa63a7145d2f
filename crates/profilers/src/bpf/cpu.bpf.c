// SPDX-License-Identifier: GPL-2.0
// Baton CPU profiler: runs on a perf_event (cycles or cpu-clock) on every CPU, aggregates
// (pid, tid, comm, cgroup, kernel stack, user stack) -> count in one of two buffers, so user
// space can drain one buffer while the other fills.
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define MAX_STACK_DEPTH 127
#define MAX_ENTRIES 16384
#define STACK_ENTRIES 16384
#define TASK_COMM_LEN 16
#define PF_KTHREAD 0x00200000
#define EFAULT 14

// CO-RE views of the two kernel structs we read; fields are relocated by name at load time.
struct task_struct {
    unsigned int flags;
    int pid;
    int tgid;
} __attribute__((preserve_access_index));

struct sample_key {
    __u32 pid;
    __u32 tid;
    __u64 cgroup_id;
    __s32 kernel_stack;
    __s32 user_stack;
    char comm[TASK_COMM_LEN];
};

#define COUNTS_MAP(name)                                                                       \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_HASH);                                                       \
        __uint(max_entries, MAX_ENTRIES);                                                      \
        __type(key, struct sample_key);                                                        \
        __type(value, __u64);                                                                  \
    } name SEC(".maps")

#define STACKS_MAP(name)                                                                       \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_STACK_TRACE);                                                \
        __uint(max_entries, STACK_ENTRIES);                                                    \
        __uint(key_size, sizeof(__u32));                                                       \
        __uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));                                   \
    } name SEC(".maps")

COUNTS_MAP(counts0);
COUNTS_MAP(counts1);
STACKS_MAP(stacks0);
STACKS_MAP(stacks1);

// Processes to profile when filtering is on (tgid -> 1).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, __u8);
} targets SEC(".maps");

enum stat_index {
    STAT_SAMPLES = 0,         // samples taken (after filtering)
    STAT_LOST_MAP_FULL = 1,   // samples lost because the counts map was full
    STAT_KSTACK_FAILED = 2,   // kernel stack expected but not collected
    STAT_USTACK_FAILED = 3,   // user stack expected but not collected
    STAT_IDLE = 4,            // samples of the idle task, not recorded
    STAT_FILTERED = 5,        // samples of processes not targeted
    STAT_FORKS_FOLLOWED = 6,  // children added to the target set
    STAT_COUNT = 7,
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

const volatile __u8 filter_targets = 0;
const volatile __u8 follow_forks = 0;
const volatile __u8 include_idle = 0;
// Which buffer the programs write to; flipped by user space at each drain.
volatile __u32 active_buffer = 0;

static __always_inline void bump(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&stats, &idx);
    if (v)
        *v += 1;
}

SEC("perf_event")
int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    __u32 tid = (__u32)id;

    if (tid == 0 && !include_idle) {
        bump(STAT_IDLE);
        return 0;
    }
    if (filter_targets && !bpf_map_lookup_elem(&targets, &tgid)) {
        bump(STAT_FILTERED);
        return 0;
    }

    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    int kthread = BPF_CORE_READ(task, flags) & PF_KTHREAD;
    int in_user = (ctx->regs.cs & 3) == 3;

    struct sample_key key = {};
    key.pid = tgid;
    key.tid = tid;
    key.cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&key.comm, sizeof(key.comm));

    __u32 buf = active_buffer;
    void *stacks = buf ? (void *)&stacks1 : (void *)&stacks0;
    void *counts = buf ? (void *)&counts1 : (void *)&counts0;

    key.kernel_stack = bpf_get_stackid(ctx, stacks, 0);
    // A sample taken in user mode has no kernel stack; that is not a failure.
    if (key.kernel_stack < 0 && !(in_user && key.kernel_stack == -EFAULT))
        bump(STAT_KSTACK_FAILED);
    key.user_stack = bpf_get_stackid(ctx, stacks, BPF_F_USER_STACK);
    // Kernel threads have no user stack; that is not a failure either.
    if (key.user_stack < 0 && !kthread)
        bump(STAT_USTACK_FAILED);

    bump(STAT_SAMPLES);
    __u64 *count = bpf_map_lookup_elem(counts, &key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return 0;
    }
    __u64 one = 1;
    if (bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST) != 0) {
        // Another CPU may have inserted the same key in between; retry the add once.
        count = bpf_map_lookup_elem(counts, &key);
        if (count)
            __sync_fetch_and_add(count, 1);
        else
            bump(STAT_LOST_MAP_FULL);
    }
    return 0;
}

// Follows children of targeted processes, as `perf record -- cmd` does.
SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
    if (!filter_targets || !follow_forks)
        return 0;
    __u32 ptgid = parent->tgid;
    if (!bpf_map_lookup_elem(&targets, &ptgid))
        return 0;
    __u32 ctgid = child->tgid;
    __u8 one = 1;
    if (ctgid != ptgid && bpf_map_update_elem(&targets, &ctgid, &one, BPF_ANY) == 0)
        bump(STAT_FORKS_FOLLOWED);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
