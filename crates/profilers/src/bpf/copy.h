// SPDX-License-Identifier: GPL-2.0
// User-stack copies for DWARF unwinding, shared by the event-driven profilers (offcpu and those
// built on common.h). Where the current thread's user code lacks frame pointers (per process,
// as user space plans it in `dwarf_pids`), an event copies the user registers and stack into the
// `copies` ring under a cookie (its start time); when the event ends, `send_end` reports what
// was measured through the same ring, and user space pairs the two by (thread, cookie).
//
// A copy takes in the ring only the stack it holds: it is built in a per-CPU slot and sent with
// its real length, and it stops where its stack does (the main thread's initial stack pointer,
// or the end of a thread's stack mapping), so a shallow stack costs a few hundred bytes of the
// ring rather than USTACK_BYTES, and a burst of events fits. Include it after base.h.
#ifndef BATON_COPY_H
#define BATON_COPY_H

#include "unwind.h"
#include "interp.h"

enum { EV_COPY = 1, EV_END = 2, EV_INTERP = 3 };

// A copy: the header, then the `stack_bytes` bytes of `stack` that were copied and no more
// (the record in the ring is that long).
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
    __u64 ctx; // the thread's context (threadctx.h), 0: none
};
_Static_assert(sizeof(struct end_event) == 88, "end_event is EndEvent in Rust");

// The interpreter frames (interp.h) of the copy that follows it under the same (tid, cookie); sent
// `n` frames long, only for processes with an interpreter.
struct interp_event {
    __u32 kind;
    __u32 pid;
    __u64 cookie;
    __u32 tid;
    __u32 n;
    __u32 status;
    __u32 pad;
    __u64 frames[MAX_INTERP_FRAMES];
};
_Static_assert(sizeof(struct interp_event) == 32 + 8 * MAX_INTERP_FRAMES,
               "interp_event is InterpEvent in Rust");

// Sized by user space before load (`size_copy_ring`): 16 MiB, or one page when DWARF unwinding
// is off.
RINGBUF(copies, 16 * 1024 * 1024);

// Where a copy is built before it goes into the ring, one slot per CPU (indexed by CPU: a
// per-CPU map's value cannot hold USTACK_BYTES and the header). `busy` keeps a program that
// interrupts another on the same CPU from writing over its copy. Sized by user space before
// load: the possible CPUs, or one slot when DWARF unwinding is off.
struct copy_slot {
    __u64 busy;
    struct copy_event ev;
    struct interp_event iv;
};
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct copy_slot);
} copy_slots SEC(".maps");

// What copy_stack_limit reads of a task and its mappings (CO-RE, against the kernel's own
// structs).
struct mm_struct___copy {
    unsigned long start_stack;
} __attribute__((preserve_access_index));
struct task_struct___copy {
    struct mm_struct___copy *mm;
} __attribute__((preserve_access_index));
struct vm_area_struct___copy {
    unsigned long vm_end;
} __attribute__((preserve_access_index));

// bpf_find_vma's callback: the end of the mapping found.
static long copy_vma_end(struct task_struct *task, struct vm_area_struct___copy *vma, __u64 *end)
{
    *end = vma->vm_end;
    return 0;
}

// How much of `task`'s stack above `sp` a copy needs, at most USTACK_BYTES. On the main thread's
// stack the frames end at the process's initial stack pointer (mm->start_stack, where argc
// lies); above it are only the arguments, the environment and the auxiliary vector, often many
// KiB. Other stacks (threads', signal stacks) end where their mapping does; when the mapping
// cannot be looked up (its lock is taken), the copy's reads stop at the first page that fails,
// which may be past the mapping.
static __always_inline __u64 copy_stack_limit(struct task_struct *task, __u64 sp)
{
    struct task_struct___copy *t = (void *)task;
    __u64 end = BPF_CORE_READ(t, mm, start_stack);
    if (end > sp && end - sp < USTACK_BYTES)
        return end - sp;
    end = 0;
    if (bpf_find_vma(task, sp, copy_vma_end, &end, 0) != 0)
        return USTACK_BYTES;
    if (end > sp && end - sp < USTACK_BYTES)
        return end - sp;
    return USTACK_BYTES;
}

// [0]: stacks copied; [1]: copies or ends that found no room (the ring was full, or the CPU's
// slot was in use).
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

// Records go into the copy ring without waking its reader, which reads every 20 ms anyway,
// unless the ring is more than half full: then the reader is woken to make room before a burst
// of copies fills it.
static __always_inline __u64 copy_wakeup(void)
{
    __u64 used = bpf_ringbuf_query(&copies, BPF_RB_AVAIL_DATA);
    if (used > bpf_ringbuf_query(&copies, BPF_RB_RING_SIZE) / 2)
        return BPF_RB_FORCE_WAKEUP;
    return BPF_RB_NO_WAKEUP;
}

// Copies `task`'s (the current task's) user registers and stack: with `any_ip`, always (DWARF
// unwinding on); else when the process's unwinding plan covers the current instruction (its
// code lacks frame pointers). Returns 1 when a copy was sent.
static __always_inline int copy_user_stack_if(struct task_struct *task, __u32 tgid, __u32 tid,
                                              __u64 cookie, int any_ip)
{
    if (!dwarf)
        return 0;
    struct unwind_plan *plan = bpf_map_lookup_elem(&dwarf_pids, &tgid);
    if (!plan && !any_ip)
        return 0;
    struct user_regs regs = {};
    struct pt_regs *uregs = bpf_task_pt_regs(task);
    if (!uregs || bpf_probe_read_kernel(&regs, sizeof(regs), uregs) != 0)
        return 0;
    if ((regs.cs & 3) != 3 || regs.rsp == 0)
        return 0;
    if (!any_ip && plan && !plan_covers(plan, regs.rip))
        return 0;
    __u32 cpu = bpf_get_smp_processor_id();
    struct copy_slot *slot = bpf_map_lookup_elem(&copy_slots, &cpu);
    if (!slot || slot->busy) {
        copy_bump(1);
        return 0;
    }
    slot->busy = 1;
    // The interpreter's frames first, so that user space has them when the copy comes.
    struct interp_event *iv = &slot->iv;
    iv->n = interp_walk(tgid, tid, iv->frames, &iv->status);
    if (iv->n > 0 || iv->status == INTERP_READ_FAILED) {
        iv->kind = EV_INTERP;
        iv->pid = tgid;
        iv->cookie = cookie;
        iv->tid = tid;
        iv->pad = 0;
        __u64 ilen = sizeof(*iv) - sizeof(iv->frames) + (__u64)iv->n * 8;
        if (ilen > sizeof(*iv))
            ilen = sizeof(*iv);
        if (bpf_ringbuf_output(&copies, iv, ilen, BPF_RB_NO_WAKEUP) != 0)
            copy_bump(1);
    }
    struct copy_event *ev = &slot->ev;
    ev->kind = EV_COPY;
    ev->pid = tgid;
    ev->tid = tid;
    ev->pad = 0;
    ev->cookie = cookie;
    save_regs(&ev->regs, &regs);
    __u64 copied = copy_stack_upto(ev->stack, regs.rsp, copy_stack_limit(task, regs.rsp));
    ev->stack_bytes = copied;
    __u64 len = sizeof(*ev) - USTACK_BYTES + copied;
    if (len > sizeof(*ev))
        len = sizeof(*ev);
    long err = bpf_ringbuf_output(&copies, ev, len, copy_wakeup());
    slot->busy = 0;
    if (err != 0) {
        copy_bump(1);
        return 0;
    }
    copy_bump(0);
    return 1;
}

// copy_user_stack_if where the current instruction lacks frame pointers (the plan covers it).
static __always_inline int copy_user_stack(struct task_struct *task, __u32 tgid, __u32 tid,
                                           __u64 cookie)
{
    return copy_user_stack_if(task, tgid, tid, cookie, 0);
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
                                    __u64 bytes, const char *comm, __u64 ctx)
{
    struct end_event e = {.kind = EV_END, .pid = pid, .cookie = cookie, .tid = tid,
                          .what = what, .cgroup_id = cgroup_id, .kernel_stack = kernel_stack,
                          .ns = ns, .count = count, .bytes = bytes, .ctx = ctx};
    __builtin_memcpy(e.comm, comm, sizeof(e.comm));
    if (bpf_ringbuf_output(&copies, &e, sizeof(e), BPF_RB_NO_WAKEUP) != 0) {
        copy_bump(1);
        return -1;
    }
    return 0;
}

#endif
