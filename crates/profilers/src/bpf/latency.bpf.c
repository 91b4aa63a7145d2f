// SPDX-License-Identifier: GPL-2.0
// Baton request-latency profiler: a begin probe and an end probe (uprobes or USDT) delimit a
// request, matched per thread or by an argument. Each request's latency goes into a
// power-of-two histogram per process. While a request runs, a cpu-clock sampler on every CPU
// sends the stacks of the thread that began it to user space, tagged with the request; user
// space keeps the samples of requests that end slower than the threshold and drops the rest.
// This is the CPU profiler's signal composed with request boundaries, as Strobelight's Crochet
// does.
#include "stats.h"
enum stat_index {
    STATS_HEAD(STAT_REQUESTS),  // requests ended
    STAT_KSTACK_FAILED = 3,
    STAT_FORKS_FOLLOWED = 4,
    STAT_SLOW = 5,          // requests at or above the threshold
    STAT_RING_FULL = 6,     // samples or ends the ring had no room for
    STAT_SAMPLES = 7,       // CPU samples taken inside requests
    STAT_NO_BEGIN = 8,      // ends with no matching begin
    STAT_COUNT = 9,
};
#include "common.h"
#include <stdbool.h>
#include <linux/bpf_perf_event.h>
#include <bpf/usdt.bpf.h>

// 0: match begin and end by thread; N: by the begin's and the end's argument N (1-based).
const volatile __u8 match_arg = 0;
const volatile __u64 threshold_ns = 10000000;

struct inflight {
    __u64 start;
    __u64 id;
    __u32 pid;
    __u32 tid;
};
_Static_assert(sizeof(struct inflight) == 24, "inflight is Inflight in Rust");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct inflight);
} inflight SEC(".maps");

// The request each thread is working on (the last it began).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u64);
} running SEC(".maps");

RINGBUF(events, 4 * 1024 * 1024);

enum { EV_SAMPLE = 1, EV_SLOW = 2 };

struct sample_event {
    __u32 kind;
    __u32 pid;
    __u64 id;
    __u32 tid;
    __s32 kernel_stack;
    __s32 user_stack;
    // 1: the user stack was copied (copy.h) under `cookie` instead of walked.
    __u32 copied;
    char comm[TASK_COMM_LEN];
    __u64 cookie;
    __u64 ctx; // the thread's context (threadctx.h), 0: none
};
_Static_assert(sizeof(struct sample_event) == 64, "sample_event is SampleEvent in Rust");

struct slow_event {
    __u32 kind;
    __u32 pid;
    __u64 id;
    __u64 latency;
    __u64 start;
    __u32 tid;
    __u32 pad;
};
_Static_assert(sizeof(struct slow_event) == 40, "slow_event is SlowEvent in Rust");

static __always_inline int begin(__u64 arg)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 pid = pid_tgid >> 32;
    __u32 tid = (__u32)pid_tgid;
    if (!is_target(pid))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    __u64 key = match_arg ? arg : tid;
    struct inflight f = {.start = now, .pid = pid, .tid = tid};
    // A request id unique enough for one host and run: the thread and the time it began.
    f.id = match_arg ? arg : (((__u64)tid << 40) ^ now);
    if (bpf_map_update_elem(&inflight, &key, &f, BPF_ANY) != 0) {
        bump(STAT_LOST_MAP_FULL);
        return 0;
    }
    bpf_map_update_elem(&running, &tid, &f.id, BPF_ANY);
    return 0;
}

static __always_inline int end(__u64 arg)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)pid_tgid;
    __u64 key = match_arg ? arg : tid;
    struct inflight *f = bpf_map_lookup_elem(&inflight, &key);
    if (!f) {
        bump(STAT_NO_BEGIN);
        return 0;
    }
    __u64 delta = bpf_ktime_get_ns() - f->start;
    struct inflight done = *f;
    bpf_map_delete_elem(&inflight, &key);
    __u64 *cur = bpf_map_lookup_elem(&running, &done.tid);
    if (cur && *cur == done.id)
        bpf_map_delete_elem(&running, &done.tid);
    if (add_hist(done.pid, 0, delta) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_REQUESTS);
    if (delta < threshold_ns)
        return 0;
    bump(STAT_SLOW);
    struct slow_event e = {.kind = EV_SLOW, .pid = done.pid, .id = done.id, .latency = delta,
                           .start = done.start, .tid = done.tid};
    if (bpf_ringbuf_output(&events, &e, sizeof(e), 0) != 0)
        bump(STAT_RING_FULL);
    return 0;
}

static __always_inline __u64 uprobe_arg(struct pt_regs *ctx)
{
    if (!match_arg)
        return 0;
    // A copy on the stack: the verifier refuses a context read at an offset chosen at run time.
    struct pt_regs regs;
    if (bpf_probe_read_kernel(&regs, sizeof(regs), ctx) != 0)
        return 0;
    switch (match_arg) {
    case 1: return PT_REGS_PARM1(&regs);
    case 2: return PT_REGS_PARM2(&regs);
    case 3: return PT_REGS_PARM3(&regs);
    case 4: return PT_REGS_PARM4(&regs);
    case 5: return PT_REGS_PARM5(&regs);
    case 6: return PT_REGS_PARM6(&regs);
    default: return 0;
    }
}

static __always_inline __u64 usdt_arg(struct pt_regs *ctx)
{
    long v = 0;
    if (match_arg)
        bpf_usdt_arg(ctx, match_arg - 1, &v);
    return (__u64)v;
}

SEC("uprobe")
int BPF_KPROBE(begin_uprobe)
{
    return begin(uprobe_arg(ctx));
}

SEC("uprobe")
int BPF_KPROBE(end_uprobe)
{
    return end(uprobe_arg(ctx));
}

SEC("usdt")
int begin_usdt(struct pt_regs *ctx)
{
    return begin(usdt_arg(ctx));
}

SEC("usdt")
int end_usdt(struct pt_regs *ctx)
{
    return end(usdt_arg(ctx));
}

SEC("perf_event")
int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)pid_tgid;
    __u64 *id = bpf_map_lookup_elem(&running, &tid);
    if (!id)
        return 0;
    struct sample_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        bump(STAT_RING_FULL);
        return 0;
    }
    e->kind = EV_SAMPLE;
    e->pid = pid_tgid >> 32;
    e->tid = tid;
    e->id = *id;
    e->copied = 0;
    e->cookie = 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    e->ctx = thread_ctx(e->pid);
    e->kernel_stack = bpf_get_stackid(ctx, &stacks, 0);
    if (e->kernel_stack < 0 && e->kernel_stack != -14)
        bump(STAT_KSTACK_FAILED);
    __u64 now = bpf_ktime_get_ns();
    e->user_stack = current_user_stack(ctx, &stacks, now, &e->copied);
    if (e->copied)
        e->cookie = now;
    bpf_ringbuf_submit(e, 0);
    bump(STAT_SAMPLES);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
