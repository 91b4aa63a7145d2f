// SPDX-License-Identifier: GPL-2.0
// Baton CPU profiler: runs on a perf_event (cycles or cpu-clock) on every CPU, aggregates
// (pid, tid, comm, cgroup, kernel stack, user stack) -> count in one of two buffers, so user
// space can drain one buffer while the other fills.
//
// Samples whose user code lacks frame pointers (user space lists those code ranges per process
// in `dwarf_pids`) are not walked here: the program copies the user registers and the top of
// the user stack into a ring buffer instead, and user space unwinds them with DWARF CFI.
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define MAX_STACK_DEPTH 127
#define MAX_ENTRIES 16384
#define STACK_ENTRIES 16384
#define TASK_COMM_LEN 16
#define PF_KTHREAD 0x00200000
#define EFAULT 14

// CO-RE views of the two kernel structs we read; fields are relocated by name at load time.
struct task_struct {
    unsigned int flags;
    int pid;
    int tgid;
} __attribute__((preserve_access_index));

// The user registers as the uapi <asm/ptrace.h> lays them out on x86-64.
struct user_regs {
    unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi;
    unsigned long orig_rax, rip, cs, eflags, rsp, ss;
};

struct sample_key {
    __u32 pid;
    __u32 tid;
    __u64 cgroup_id;
    __s32 kernel_stack;
    __s32 user_stack;
    char comm[TASK_COMM_LEN];
};

#define COUNTS_MAP(name)                                                                       \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_HASH);                                                       \
        __uint(max_entries, MAX_ENTRIES);                                                      \
        __type(key, struct sample_key);                                                        \
        __type(value, __u64);                                                                  \
    } name SEC(".maps")

#define STACKS_MAP(name)                                                                       \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_STACK_TRACE);                                                \
        __uint(max_entries, STACK_ENTRIES);                                                    \
        __uint(key_size, sizeof(__u32));                                                       \
        __uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));                                   \
    } name SEC(".maps")

COUNTS_MAP(counts0);
COUNTS_MAP(counts1);
STACKS_MAP(stacks0);
STACKS_MAP(stacks1);

// Processes to profile when filtering is on (tgid -> 1).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, __u8);
} targets SEC(".maps");

// Code ranges without frame pointers, per process (tgid). `all` = 1 copies every sample of the
// process (its executable lacks frame pointers, so its frames are in nearly every stack).
#define MAX_RANGES 16
struct range {
    __u64 start;
    __u64 end;
};
struct unwind_plan {
    __u32 all;
    __u32 n;
    struct range ranges[MAX_RANGES];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, struct unwind_plan);
} dwarf_pids SEC(".maps");

// A copied sample: enough for user space to unwind with CFI. The user stack is copied from the
// stack pointer upwards, page by page, up to USTACK_BYTES or the end of the stack mapping.
#define PAGE 4096
#define USTACK_PAGES 8
#define USTACK_BYTES (USTACK_PAGES * PAGE)
struct stack_event {
    __u32 pid;
    __u32 tid;
    __u64 cgroup_id;
    char comm[TASK_COMM_LEN];
    __u64 ip;
    __u64 sp;
    __u64 bp;
    __s64 kernel_bytes;
    __u64 stack_bytes;
    __u64 kernel[MAX_STACK_DEPTH];
    __u8 stack[USTACK_BYTES];
    __u64 ts;                   // when the sample was taken, for the timeline
};

// Sized by user space before load: one page when DWARF unwinding is off.
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 * 1024 * 1024);
} stack_events SEC(".maps");

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

// Sized by user space before load from the CPU count and frequency.
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} ticks SEC(".maps");

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

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

const volatile __u8 filter_targets = 0;
const volatile __u8 follow_forks = 0;
const volatile __u8 include_idle = 0;
const volatile __u8 emit_ticks = 0;
// Which buffer the programs write to; flipped by user space at each drain.
volatile __u32 active_buffer = 0;

static __always_inline void bump(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&stats, &idx);
    if (v)
        *v += 1;
}

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
    if (plan->all)
        return 1;
    __u64 ip = regs->rip;
    __u32 n = plan->n;
    for (int i = 0; i < MAX_RANGES; i++) {
        if (i >= n)
            break;
        if (ip >= plan->ranges[i].start && ip < plan->ranges[i].end)
            return 1;
    }
    return 0;
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
    ev->ip = regs->rip;
    ev->sp = regs->rsp;
    ev->bp = regs->rbp;
    ev->kernel_bytes = bpf_get_stack(ctx, ev->kernel, sizeof(ev->kernel), 0);

    // First the rest of the page the stack pointer is in, then whole pages while they read:
    // a read past the end of the stack mapping fails, and the copy ends there.
    __u64 sp = regs->rsp;
    __u64 first = PAGE - (sp & (PAGE - 1));
    __u64 copied = 0;
    if (first > PAGE)
        first = PAGE;
    if (first > 0 && bpf_probe_read_user(ev->stack, first, (void *)sp) == 0) {
        copied = first;
        for (int i = 0; i < USTACK_PAGES - 1; i++) {
            __u64 off = copied;
            if (off > USTACK_BYTES - PAGE)
                break;
            if (bpf_probe_read_user(ev->stack + off, PAGE, (void *)(sp + off)) != 0)
                break;
            copied = off + PAGE;
        }
    }
    ev->stack_bytes = copied;
    ev->ts = bpf_ktime_get_ns();
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
    __u64 *count = bpf_map_lookup_elem(counts, &key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return 0;
    }
    __u64 one = 1;
    if (bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST) != 0) {
        // Another CPU may have inserted the same key in between; retry the add once.
        count = bpf_map_lookup_elem(counts, &key);
        if (count)
            __sync_fetch_and_add(count, 1);
        else
            bump(STAT_LOST_MAP_FULL);
    }
    return 0;
}

// Follows children of targeted processes, as `perf record -- cmd` does.
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

char LICENSE[] SEC("license") = "GPL";
