// SPDX-License-Identifier: GPL-2.0
// Baton lock profiler: time threads wait in futex(2) wait operations (FUTEX_WAIT,
// FUTEX_WAIT_BITSET, FUTEX_LOCK_PI, FUTEX_LOCK_PI2, FUTEX_WAIT_REQUEUE_PI), from the
// syscalls:sys_enter_futex and sys_exit_futex tracepoints, per thread and user stack, with a
// histogram of waits per process. Every wait is recorded (waits are slow by nature).
#include "stats.h"
enum stat_index {
    STATS_HEAD(STAT_WAITS),
    STAT_NO_STORAGE = 3,
    STAT_FORKS_FOLLOWED = 4,
    STAT_COUNT = 5,
};
#include "common.h"

#define FUTEX_WAIT 0
#define FUTEX_LOCK_PI 6
#define FUTEX_WAIT_BITSET 9
#define FUTEX_WAIT_REQUEUE_PI 11
#define FUTEX_LOCK_PI2 13
#define FUTEX_CMD_MASK 0x7f

// The layout of the syscalls:sys_enter_futex and sys_exit_futex records.
struct futex_enter {
    __u64 common;
    __s32 nr;
    __u32 pad;
    __u64 uaddr;
    __u64 op;
    __u64 val;
    __u64 utime;
    __u64 uaddr2;
    __u64 val3;
};

struct futex_exit {
    __u64 common;
    __s32 nr;
    __u32 pad;
    __s64 ret;
};

// A futex wait in progress, and its operation.
STARTS(__u32 op; __u32 pad;);

SEC("tracepoint/syscalls/sys_enter_futex")
int on_futex_enter(struct futex_enter *args)
{
    __u32 cmd = args->op & FUTEX_CMD_MASK;
    if (cmd != FUTEX_WAIT && cmd != FUTEX_WAIT_BITSET && cmd != FUTEX_LOCK_PI &&
        cmd != FUTEX_LOCK_PI2 && cmd != FUTEX_WAIT_REQUEUE_PI)
        return 0;
    struct start *s = target_start(&starts, STAT_NO_STORAGE);
    if (!s)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    s->op = cmd;
    s->user_stack = current_user_stack(args, &stacks, now, &s->copied);
    s->ts = now;
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex")
int on_futex_exit(struct futex_exit *args)
{
    __u64 cookie, delta;
    struct start *s = take_started(&starts, &cookie, &delta);
    if (!s)
        return 0;
    struct row_key key = {};
    current_row_key(&key, s->op);
    key.user_stack = s->user_stack;
    if (add_hist(key.pid, 0, delta) != 0)
        bump(STAT_LOST_MAP_FULL);
    if (count_ended(&key, s->copied, cookie, 1, delta, 0) != 0)
        bump(STAT_LOST_MAP_FULL);
    bump(STAT_WAITS);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
