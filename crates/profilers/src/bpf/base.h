// SPDX-License-Identifier: GPL-2.0
// What every Baton BPF program that follows target processes shares: the targets map with fork
// following, per-CPU counters, stack maps, the histogram key, and small helpers. Include it after
// declaring STAT_COUNT and STAT_FORKS_FOLLOWED in the program's stat enum.
//
// Every struct that user space reads or writes has a `_Static_assert` on its size next to it,
// and a `#[repr(C)]` twin of the same name in Rust with the same assertion (see
// `mechanics/record.rs`).
#ifndef BATON_BASE_H
#define BATON_BASE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define MAX_STACK_DEPTH 127
#define TASK_COMM_LEN 16

struct task_struct {
    unsigned int flags;
    unsigned int __state;
    int pid;
    int tgid;
    char comm[TASK_COMM_LEN];
} __attribute__((preserve_access_index));

// A stack map of `entries` stacks of MAX_STACK_DEPTH addresses (a `[u64; 127]` in Rust).
#define STACK_MAP(name, entries)                                                               \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_STACK_TRACE);                                                \
        __uint(max_entries, entries);                                                          \
        __uint(key_size, sizeof(__u32));                                                       \
        __uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));                                   \
    } name SEC(".maps")

// A ring buffer of `bytes` bytes (user space may size it again before load).
#define RINGBUF(name, bytes)                                                                   \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_RINGBUF);                                                    \
        __uint(max_entries, bytes);                                                            \
    } name SEC(".maps")

// Task-local storage of `type`: found through the task itself, with no hash lookup.
#define TASK_STORAGE(name, value_type)                                                               \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_TASK_STORAGE);                                               \
        __uint(map_flags, BPF_F_NO_PREALLOC);                                                  \
        __type(key, int);                                                                      \
        __type(value, value_type);                                                             \
    } name SEC(".maps")

// One row of events: a thread's stacks and what its events are (a syscall number, an operation,
// a block's state), in buffer `buffer`; `RowKey` in Rust.
struct row_key {
    __u32 pid;
    __u32 tid;
    __u64 cgroup_id;
    __s32 kernel_stack;
    __s32 user_stack;
    __u32 kind;
    __u32 buffer;
    char comm[TASK_COMM_LEN];
    __u64 ctx; // the thread's context (threadctx.h), 0: none
};
_Static_assert(sizeof(struct row_key) == 56, "row_key is RowKey in Rust");

// A power-of-two histogram's key: (process, what is measured, bucket, buffer); `HistKey` in Rust.
struct hist_key {
    __u32 pid;
    __u32 kind;
    __u32 bucket;
    __u32 buffer;
};
_Static_assert(sizeof(struct hist_key) == 16, "hist_key is HistKey in Rust");

// Processes to profile when filtering is on (tgid -> 1).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, __u8);
} targets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

const volatile __u8 filter_targets = 0;
const volatile __u8 follow_forks = 0;

static __always_inline void bump(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&stats, &idx);
    if (v)
        *v += 1;
}

static __always_inline int is_target(__u32 tgid)
{
    return !filter_targets || bpf_map_lookup_elem(&targets, &tgid) != 0;
}

// Adds `n` to the u64 at `key` in a hash map, creating it; returns -1 when the map is full.
static __always_inline int add_u64(void *map, void *key, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(map, key);
    if (v) {
        __sync_fetch_and_add(v, n);
        return 0;
    }
    if (bpf_map_update_elem(map, key, &n, BPF_NOEXIST) == 0)
        return 0;
    // Another CPU created it in between.
    v = bpf_map_lookup_elem(map, key);
    if (!v)
        return -1;
    __sync_fetch_and_add(v, n);
    return 0;
}

// The task-local storage of `task` in `map`, created if need be; NULL, counted in stat `full`,
// when none can be had.
static __always_inline void *task_start(void *map, struct task_struct *task, __u32 full)
{
    void *s = bpf_task_storage_get(map, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!s)
        bump(full);
    return s;
}

// The current thread's slot in task storage `map` when its process is a target; NULL otherwise,
// or (counted in stat `full`) when none can be had.
static __always_inline void *target_start(void *map, __u32 full)
{
    if (!is_target(bpf_get_current_pid_tgid() >> 32))
        return 0;
    return task_start(map, bpf_get_current_task_btf(), full);
}

// Takes the event the current thread started in task storage `map`, whose values begin with
// `__u64 ts` (0: none started): NULL when there is none, else its slot, with `*cookie` its
// start and `*delta` how long it lasted; its `ts` is cleared.
static __always_inline void *take_started(void *map, __u64 *cookie, __u64 *delta)
{
    __u64 *ts = bpf_task_storage_get(map, bpf_get_current_task_btf(), 0, 0);
    if (!ts || *ts == 0)
        return 0;
    *cookie = *ts;
    *delta = bpf_ktime_get_ns() - *ts;
    *ts = 0;
    return ts;
}

// The power-of-two bucket of `v`: floor(log2(v)), 0 for 0 and 1.
static __always_inline __u32 log2_bucket(__u64 v)
{
    __u32 b = 0;
    if (v >= (1ULL << 32)) { v >>= 32; b += 32; }
    if (v >= (1ULL << 16)) { v >>= 16; b += 16; }
    if (v >= (1ULL << 8)) { v >>= 8; b += 8; }
    if (v >= (1ULL << 4)) { v >>= 4; b += 4; }
    if (v >= (1ULL << 2)) { v >>= 2; b += 2; }
    if (v >= (1ULL << 1)) { b += 1; }
    return b;
}

// Children of targets become targets.
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

#endif
