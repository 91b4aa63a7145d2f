// SPDX-License-Identifier: GPL-2.0
// Baton syscall profiler: raw_syscalls sys_enter/sys_exit. Every syscall of the targets is
// timed into a power-of-two latency histogram per (process, syscall), exactly. Stacks are taken
// at the entry for one syscall in `sample_every` (at random, so the per-second budget user
// space sets holds), and those rows carry the weight `sample_every`.
#include "stats.h"
enum stat_index {
    STATS_HEAD(STAT_SYSCALLS),  // syscalls of targets that returned
    STAT_TRACKED = 3,           // of those, with stacks
    STAT_NO_STORAGE = 4,
    STAT_FORKS_FOLLOWED = 5,
    STAT_COUNT = 6,
};
#include "common.h"

struct pt_regs;

// A syscall in progress: its number, and the weight its stacks carry (0: none taken).
STARTS(__u32 nr; __u32 weight;);

SEC("tp_btf/sys_enter")
int BPF_PROG(on_enter, struct pt_regs *regs, long id)
{
    struct start *s = target_start(&starts, STAT_NO_STORAGE);
    if (!s)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    s->nr = (__u32)id;
    s->weight = sampled_weight();
    s->user_stack = -1;
    s->copied = 0;
    if (s->weight)
        s->user_stack = current_user_stack(ctx, &stacks, now, &s->copied);
    s->ts = now;
    return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_exit, struct pt_regs *regs, long ret)
{
    __u64 cookie, delta;
    struct start *s = take_started(&starts, &cookie, &delta);
    if (!s)
        return 0;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 pid = pid_tgid >> 32;
    bump(STAT_SYSCALLS);
    if (add_hist(pid, s->nr, delta) != 0)
        bump(STAT_LOST_MAP_FULL);
    if (!s->weight)
        return 0;
    struct row_key key = {};
    current_row_key(&key, s->nr);
    key.user_stack = s->user_stack;
    if (count_ended(&key, s->copied, cookie, s->weight, delta * s->weight, 0) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_TRACKED);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
