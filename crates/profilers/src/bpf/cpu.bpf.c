// SPDX-License-Identifier: GPL-2.0
// Baton CPU profiler: runs on a perf_event (cycles or cpu-clock) on every CPU, aggregates
// (pid, tid, comm, cgroup, kernel stack, user stack) -> count in one of two buffers, so user
// space can drain one buffer while the other fills.
//
// Samples whose user code lacks frame pointers (user space lists those code ranges per process
// in `dwarf_pids`, unwind.h) are not walked here: the program copies the user registers and the
// top of the user stack into a ring buffer instead, and user space unwinds them with DWARF CFI.
enum stat_index {
    STAT_SAMPLES = 0,         // samples taken (after filtering)
    STAT_LOST_MAP_FULL = 1,   // samples lost because the counts map was full
    STAT_KSTACK_FAILED = 2,   // kernel stack expected but not collected
    STAT_USTACK_FAILED = 3,   // user stack expected but not collected
    STAT_IDLE = 4,            // samples of the idle task, not recorded
    STAT_FILTERED = 5,        // samples of processes not targeted
    STAT_FORKS_FOLLOWED = 6,  // children added to the target set
    STAT_DWARF_COPIED = 7,    // samples whose user stack was copied for DWARF unwinding
    STAT_DWARF_RING_FULL = 8, // copies that did not fit the ring (frame pointers used instead)
    STAT_DWARF_NO_REGS = 9,   // copies without user registers (frame pointers used instead)
    STAT_TICKS_LOST = 10,     // samples left off the timeline: the tick ring was full
    STAT_COUNT = 11,
};
#include "base.h"
#include "unwind.h"
#include "interp.h"
#include "threadctx.h"
#include <linux/bpf_perf_event.h>
#include <linux/ptrace.h>

#define MAX_ENTRIES 16384
#define STACK_ENTRIES 16384
#define PF_KTHREAD 0x00200000
#define EFAULT 14

struct sample_key {
    __u32 pid;
    __u32 tid;
    __u64 cgroup_id;
    __s32 kernel_stack;
    __s32 user_stack;
    char comm[TASK_COMM_LEN];
    __u64 ctx; // the thread's context (threadctx.h), 0: none
};
_Static_assert(sizeof(struct sample_key) == 48, "sample_key is SampleKey in Rust");

#define COUNTS_MAP(name)                                                                       \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_HASH);                                                       \
        __uint(max_entries, MAX_ENTRIES);                                                      \
        __type(key, struct sample_key);                                                        \
        __type(value, __u64);                                                                  \
    } name SEC(".maps")

COUNTS_MAP(counts0);
COUNTS_MAP(counts1);
STACK_MAP(stacks0, STACK_ENTRIES);
STACK_MAP(stacks1, STACK_ENTRIES);

// A copied sample: enough for user space to unwind with CFI (see copy_stack_pages). The copied
// stack comes last, so user space decodes the rest and reads the stack where it lies.
struct stack_event {
    __u32 pid;
    __u32 tid;
    __u64 cgroup_id;
    char comm[TASK_COMM_LEN];
    struct copied_regs regs;
    __s64 kernel_bytes;
    __u64 stack_bytes;
    __u64 ts;                   // when the sample was taken, for the timeline
    __u64 ctx;                  // the thread's context (threadctx.h), 0: none
    __u64 kernel[MAX_STACK_DEPTH];
    __u32 interp_n;             // interpreter frames (interp.h), leaf first
    __u32 interp_status;
    __u64 interp[MAX_INTERP_FRAMES];
    __u8 stack[USTACK_BYTES];
};
_Static_assert(sizeof(struct stack_event) == 1112 + 8 * MAX_INTERP_FRAMES + USTACK_BYTES,
               "stack_event is StackEvent + stack in Rust");

// Sized by user space before load: one page when DWARF unwinding is off.
RINGBUF(stack_events, 16 * 1024 * 1024);

// One sample's time and stacks, for the timeline: `buffer` says which stack map the ids are in.
struct tick {
    __u64 ts;
    __u32 pid;
    __u32 tid;
    __s32 kernel_stack;
    __s32 user_stack;
    __u32 buffer;
    __u32 pad;
};
_Static_assert(sizeof(struct tick) == 32, "tick is Tick in Rust");

// Sized by user space before load from the CPU count and frequency.
RINGBUF(ticks, 256 * 1024);

const volatile __u8 include_idle = 0;
const volatile __u8 emit_ticks = 0;
// Which buffer the programs write to; flipped by user space at each drain.
volatile __u32 active_buffer = 0;

// Whether this sample should be unwound from a copied stack, and the user registers if so.
static __always_inline int wants_copy(__u32 tgid, struct bpf_perf_event_data *ctx, int in_user,
                                      struct user_regs *regs)
{
    struct unwind_plan *plan = bpf_map_lookup_elem(&dwarf_pids, &tgid);
    if (!plan)
        return 0;
    if (in_user) {
        // The context is rewritten by the verifier: its fields must be loaded one by one.
        regs->cs = ctx->regs.cs;
        regs->rip = ctx->regs.rip;
        regs->rsp = ctx->regs.rsp;
        regs->rbp = ctx->regs.rbp;
    } else {
        // In a syscall or an interrupt: the user registers are saved at the top of the task's
        // kernel stack.
        struct pt_regs *uregs = bpf_task_pt_regs(bpf_get_current_task_btf());
        if (!uregs || bpf_probe_read_kernel(regs, sizeof(*regs), uregs) != 0) {
            bump(STAT_DWARF_NO_REGS);
            return 0;
        }
    }
    if ((regs->cs & 3) != 3 || regs->rsp == 0) {
        bump(STAT_DWARF_NO_REGS);
        return 0;
    }
    return plan_covers(plan, regs->rip);
}

// Sends one sample with its copied user stack. Returns 0 when the ring is full.
static __always_inline int send_copy(struct bpf_perf_event_data *ctx, __u32 tgid, __u32 tid,
                                     struct user_regs *regs)
{
    struct stack_event *ev = bpf_ringbuf_reserve(&stack_events, sizeof(*ev), 0);
    if (!ev)
        return 0;
    ev->pid = tgid;
    ev->tid = tid;
    ev->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    save_regs(&ev->regs, regs);
    ev->kernel_bytes = bpf_get_stack(ctx, ev->kernel, sizeof(ev->kernel), 0);
    ev->stack_bytes = copy_stack_pages(ev->stack, regs->rsp);
    ev->interp_n = interp_walk(tgid, tid, ev->interp, &ev->interp_status);
    ev->ts = bpf_ktime_get_ns();
    ev->ctx = thread_ctx(tgid);
    // No wakeup per sample: the reader polls the ring every 20 ms anyway.
    bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
    return 1;
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

    // Code without frame pointers: copy the stack for DWARF unwinding in user space.
    struct user_regs regs = {};
    if (!kthread && wants_copy(tgid, ctx, in_user, &regs)) {
        if (send_copy(ctx, tgid, tid, &regs)) {
            bump(STAT_DWARF_COPIED);
            bump(STAT_SAMPLES);
            return 0;
        }
        bump(STAT_DWARF_RING_FULL);
    }

    struct sample_key key = {};
    key.pid = tgid;
    key.tid = tid;
    key.cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    key.ctx = thread_ctx(tgid);

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
    if (emit_ticks) {
        struct tick *t = bpf_ringbuf_reserve(&ticks, sizeof(*t), 0);
        if (t) {
            t->ts = bpf_ktime_get_ns();
            t->pid = tgid;
            t->tid = tid;
            t->kernel_stack = key.kernel_stack;
            t->user_stack = key.user_stack;
            t->buffer = buf;
            t->pad = 0;
            bpf_ringbuf_submit(t, BPF_RB_NO_WAKEUP);
        } else {
            bump(STAT_TICKS_LOST);
        }
    }
    if (add_u64(counts, &key, 1) != 0)
        bump(STAT_LOST_MAP_FULL);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
