// SPDX-License-Identifier: GPL-2.0
// User-stack copies for DWARF unwinding, shared by the event-driven profilers (offcpu and those
// built on common.h). Where the current thread's user code lacks frame pointers (per process,
// as user space plans it in `dwarf_pids`), an event copies the user registers and stack into the
// `copies` ring under a cookie (its start time); when the event ends, `send_end` reports what
// was measured through the same ring, and user space pairs the two by (thread, cookie).
// Include it after base.h.
#ifndef BATON_COPY_H
#define BATON_COPY_H

#include "unwind.h"

enum { EV_COPY = 1, EV_END = 2 };

struct copy_event {
    __u32 kind;
    __u32 pid;
    __u64 cookie;
    __u32 tid;
    __u32 pad;
    struct copied_regs regs;
    __u64 stack_bytes;
    __u8 stack[USTACK_BYTES];
};
_Static_assert(sizeof(struct copy_event) == 56 + USTACK_BYTES, "copy_event is CopyEvent + stack in Rust");

// What an event that had its stack copied measured; `what` is its kind (a block's state, a
// syscall number, an operation).
struct end_event {
    __u32 kind;
    __u32 pid;
    __u64 cookie;
    __u32 tid;
    __u32 what;
    __u64 cgroup_id;
    __s32 kernel_stack;
    __u32 pad;
    __u64 ns;
    __u64 count;
    __u64 bytes;
    char comm[16];
};
_Static_assert(sizeof(struct end_event) == 80, "end_event is EndEvent in Rust");

// Sized by user space before load: one page when DWARF unwinding is off.
RINGBUF(copies, 8 * 1024 * 1024);

// [0]: stacks copied; [1]: copies or ends the ring had no room for.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} copy_stats SEC(".maps");

const volatile __u8 dwarf = 0;

static __always_inline void copy_bump(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&copy_stats, &idx);
    if (v)
        *v += 1;
}

// Copies `task`'s (the current task's) user registers and stack when its user code lacks
// frame pointers. Returns 1 when a copy was sent.
static __always_inline int copy_user_stack(struct task_struct *task, __u32 tgid, __u32 tid,
                                           __u64 cookie)
{
    if (!dwarf)
        return 0;
    struct unwind_plan *plan = bpf_map_lookup_elem(&dwarf_pids, &tgid);
    if (!plan)
        return 0;
    struct user_regs regs = {};
    struct pt_regs *uregs = bpf_task_pt_regs(task);
    if (!uregs || bpf_probe_read_kernel(&regs, sizeof(regs), uregs) != 0)
        return 0;
    if ((regs.cs & 3) != 3 || regs.rsp == 0)
        return 0;
    if (!plan_covers(plan, regs.rip))
        return 0;
    struct copy_event *ev = bpf_ringbuf_reserve(&copies, sizeof(*ev), 0);
    if (!ev) {
        copy_bump(1);
        return 0;
    }
    ev->kind = EV_COPY;
    ev->pid = tgid;
    ev->tid = tid;
    ev->pad = 0;
    ev->cookie = cookie;
    save_regs(&ev->regs, &regs);
    ev->stack_bytes = copy_stack_pages(ev->stack, regs.rsp);
    bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
    copy_bump(0);
    return 1;
}

// The user stack of an event that starts now: copied under `cookie` where the plan wants it
// (`*copied` = 1, and no stack id), else walked by frame pointers into `stacks`. Needs
// STAT_USTACK_FAILED in the program's stat enum.
static __always_inline __s32 user_stack_or_copy(void *ctx, void *stacks, struct task_struct *task,
                                                __u32 tgid, __u32 tid, __u64 cookie,
                                                __u32 *copied)
{
    *copied = copy_user_stack(task, tgid, tid, cookie);
    if (*copied)
        return -1;
    __s32 id = bpf_get_stackid(ctx, stacks, BPF_F_USER_STACK);
    if (id < 0)
        bump(STAT_USTACK_FAILED);
    return id;
}

// user_stack_or_copy for the current thread.
static __always_inline __s32 current_user_stack(void *ctx, void *stacks, __u64 cookie,
                                                __u32 *copied)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    return user_stack_or_copy(ctx, stacks, bpf_get_current_task_btf(), pid_tgid >> 32,
                              (__u32)pid_tgid, cookie, copied);
}

// Reports the end of an event whose stack was copied. Returns 0 when sent.
static __always_inline int send_end(__u32 pid, __u32 tid, __u64 cookie, __u32 what,
                                    __u64 cgroup_id, __s32 kernel_stack, __u64 ns, __u64 count,
                                    __u64 bytes, const char *comm)
{
    struct end_event e = {.kind = EV_END, .pid = pid, .cookie = cookie, .tid = tid,
                          .what = what, .cgroup_id = cgroup_id, .kernel_stack = kernel_stack,
                          .ns = ns, .count = count, .bytes = bytes};
    __builtin_memcpy(e.comm, comm, sizeof(e.comm));
    if (bpf_ringbuf_output(&copies, &e, sizeof(e), BPF_RB_NO_WAKEUP) != 0) {
        copy_bump(1);
        return -1;
    }
    return 0;
}

#endif
