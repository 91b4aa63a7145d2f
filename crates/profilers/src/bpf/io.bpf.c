// SPDX-License-Identifier: GPL-2.0
// Baton block I/O profiler: a request is noted at block_io_start, which runs where the I/O is
// submitted (the process and its stacks), and measured at block_rq_complete: latency and bytes
// per (process, thread, operation, stacks), and a latency histogram per (process, operation).
// Requests of processes that are not targets are not followed.
#include "stats.h"
enum stat_index {
    STATS_HEAD(STAT_REQUESTS),  // requests of targets completed
    STAT_KSTACK_FAILED = 3,
    STAT_INFLIGHT_FULL = 4,
    STAT_FORKS_FOLLOWED = 5,
    STAT_COUNT = 6,
};
#include "common.h"

#define REQ_OP_MASK 0xff

struct request {
    unsigned int cmd_flags;
    unsigned int __data_len;
} __attribute__((preserve_access_index));

struct inflight {
    __u64 ts;
    struct row_key key;
    __u32 copied;
    __u32 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u64);
    __type(value, struct inflight);
} inflight SEC(".maps");

SEC("tp_btf/block_io_start")
int BPF_PROG(on_start, struct request *rq)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid >> 32))
        return 0;
    struct inflight f = {};
    current_row_key(&f.key, rq->cmd_flags & REQ_OP_MASK);
    f.key.kernel_stack = bpf_get_stackid(ctx, &stacks, 0);
    if (f.key.kernel_stack < 0)
        bump(STAT_KSTACK_FAILED);
    f.ts = bpf_ktime_get_ns();
    f.key.user_stack = current_user_stack(ctx, &stacks, f.ts, &f.copied);
    __u64 id = (__u64)rq;
    if (bpf_map_update_elem(&inflight, &id, &f, BPF_ANY) != 0)
        bump(STAT_INFLIGHT_FULL);
    return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(on_complete, struct request *rq, int error, unsigned int nr_bytes)
{
    __u64 id = (__u64)rq;
    struct inflight *f = bpf_map_lookup_elem(&inflight, &id);
    if (!f)
        return 0;
    __u64 cookie = f->ts;
    __u64 delta = bpf_ktime_get_ns() - cookie;
    struct row_key key = f->key;
    __u32 copied = f->copied;
    bpf_map_delete_elem(&inflight, &id);
    if (add_hist(key.pid, key.kind, delta) != 0)
        bump(STAT_LOST_MAP_FULL);
    if (count_ended(&key, copied, cookie, 1, delta, nr_bytes) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_REQUESTS);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
