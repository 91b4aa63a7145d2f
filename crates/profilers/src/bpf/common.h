// SPDX-License-Identifier: GPL-2.0
// What Baton's event profilers share beyond base.h: double-buffered rows of (thread, kind,
// stacks), power-of-two histograms, a stack budget, and stack copies (copy.h). Include it after
// declaring STAT_COUNT and STAT_FORKS_FOLLOWED in the program's stat enum.
#ifndef BATON_COMMON_H
#define BATON_COMMON_H

#include "base.h"
#include "copy.h"
#include "threadctx.h"

STACK_MAP(stacks, 16384);

// Which half of the double-buffered maps BPF counts into; user space drains the other.
volatile __u32 active_buffer = 0;
// Take stacks for one event in this many (chosen at random); set from the observed rate.
volatile __u32 sample_every = 1;

// Declares `struct start`, an event in progress on a thread, and its task storage `starts`
// (target_start, take_started): when it began (`ts`, 0: none; first, as take_started reads
// it), its user stack id (-1: none), whether that stack went to user space as a copy (copy.h,
// under `ts`), then the program's own `fields`.
#define STARTS(fields)                                                                         \
    struct start {                                                                             \
        __u64 ts;                                                                              \
        __s32 user_stack;                                                                      \
        __u32 copied;                                                                          \
        fields                                                                                 \
    };                                                                                         \
    TASK_STORAGE(starts, struct start)

// Whether this event is one whose stacks are taken, and the weight it then carries.
static __always_inline __u32 sampled_weight(void)
{
    __u32 every = sample_every;
    if (every <= 1)
        return 1;
    return bpf_get_prandom_u32() % every == 0 ? every : 0;
}

// What one row's events add up to.
struct row_value {
    __u64 count;
    __u64 ns;
    __u64 bytes;
};
_Static_assert(sizeof(struct row_value) == 24, "row_value is RowValue in Rust");

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

// Counts one value in the power-of-two histogram of (pid, kind); -1 when the map is full.
static __always_inline int add_hist(__u32 pid, __u32 kind, __u64 value)
{
    struct hist_key k = {.pid = pid, .kind = kind, .bucket = log2_bucket(value),
                         .buffer = active_buffer};
    return add_u64(&hists, &k, 1);
}

// A row key for the current thread's events of `kind`, without stacks yet.
static __always_inline void current_row_key(struct row_key *key, __u32 kind)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    key->pid = pid_tgid >> 32;
    key->tid = (__u32)pid_tgid;
    key->cgroup_id = bpf_get_current_cgroup_id();
    key->kernel_stack = -1;
    key->user_stack = -1;
    key->kind = kind;
    bpf_get_current_comm(&key->comm, sizeof(key->comm));
    key->ctx = thread_ctx(key->pid);
}

// Counts an event that ended: through the copy ring when its user stack was copied (user space
// pairs it with the copy), else in its row. Returns -1 when it could not be counted.
static __always_inline int count_ended(struct row_key *key, __u32 copied, __u64 cookie,
                                       __u64 count, __u64 ns, __u64 bytes)
{
    if (copied && send_end(key->pid, key->tid, cookie, key->kind, key->cgroup_id,
                           key->kernel_stack, ns, count, bytes, key->comm, key->ctx) == 0)
        return 0;
    return add_row(key, count, ns, bytes);
}

#endif
