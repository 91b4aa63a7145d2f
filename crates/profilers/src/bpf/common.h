// SPDX-License-Identifier: GPL-2.0
// What Baton's event profilers share: the targets map with fork following, per-CPU counters,
// double-buffered counting and power-of-two buckets. Include it after declaring STAT_COUNT and
// STAT_FORKS_FOLLOWED in the program's stat enum.
#ifndef BATON_COMMON_H
#define BATON_COMMON_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define MAX_STACK_DEPTH 127
#define TASK_COMM_LEN 16

struct task_struct {
    unsigned int __state;
    int pid;
    int tgid;
    char comm[TASK_COMM_LEN];
} __attribute__((preserve_access_index));

#include "copy.h"

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

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(max_entries, 16384);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

const volatile __u8 filter_targets = 0;
const volatile __u8 follow_forks = 0;
// Which half of the double-buffered maps BPF counts into; user space drains the other.
volatile __u32 active_buffer = 0;
// Take stacks for one event in this many (chosen at random); set from the observed rate.
volatile __u32 sample_every = 1;

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

// Whether this event is one whose stacks are taken, and the weight it then carries.
static __always_inline __u32 sampled_weight(void)
{
    __u32 every = sample_every;
    if (every <= 1)
        return 1;
    return bpf_get_prandom_u32() % every == 0 ? every : 0;
}

// Adds `n` to the u64 at `key` in a hash map, creating it; returns -1 when the map is full.
static __always_inline int add_u64(void *map, void *key, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(map, key);
    if (!v) {
        bpf_map_update_elem(map, key, &n, BPF_NOEXIST);
        v = bpf_map_lookup_elem(map, key);
        if (!v)
            return -1;
        return 0;
    }
    __sync_fetch_and_add(v, n);
    return 0;
}

// One row of an event profiler: a thread's stacks and what its events add up to.
struct row_key {
    __u32 pid;
    __u32 tid;
    __u64 cgroup_id;
    __s32 kernel_stack;
    __s32 user_stack;
    // What the events are: a syscall number, an operation.
    __u32 kind;
    __u32 buffer;
    char comm[TASK_COMM_LEN];
};

struct row_value {
    __u64 count;
    __u64 ns;
    __u64 bytes;
};

struct hist_key {
    __u32 pid;
    __u32 kind;
    __u32 bucket;
    __u32 buffer;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct row_key);
    __type(value, struct row_value);
} rows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct hist_key);
    __type(value, __u64);
} hists SEC(".maps");

// Adds to a row; returns -1 when the map is full.
static __always_inline int add_row(struct row_key *key, __u64 count, __u64 ns, __u64 bytes)
{
    key->buffer = active_buffer;
    struct row_value *v = bpf_map_lookup_elem(&rows, key);
    if (!v) {
        struct row_value zero = {};
        bpf_map_update_elem(&rows, key, &zero, BPF_NOEXIST);
        v = bpf_map_lookup_elem(&rows, key);
        if (!v)
            return -1;
    }
    __sync_fetch_and_add(&v->count, count);
    __sync_fetch_and_add(&v->ns, ns);
    __sync_fetch_and_add(&v->bytes, bytes);
    return 0;
}

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

// Counts one value in the power-of-two histogram of (pid, kind); -1 when the map is full.
static __always_inline int add_hist(__u32 pid, __u32 kind, __u64 value)
{
    struct hist_key k = {.pid = pid, .kind = kind, .bucket = log2_bucket(value),
                         .buffer = active_buffer};
    return add_u64(&hists, &k, 1);
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
