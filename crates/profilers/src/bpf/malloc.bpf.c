// SPDX-License-Identifier: GPL-2.0
// Baton malloc profiler. Two ways in:
//
// - The sampling libraries' USDT probes (`usdt_alloc`, `usdt_free`): Baton's preload library
//   (src/preload/baton_malloc.c) or its jemalloc shim samples in the process and fires
//   baton:alloc(ptr, size, mean) for sampled allocations only, and baton:free(ptr) for frees of
//   those. Only samples trap. The event carries the mean; user space weighs the sample
//   1 / (1 - exp(-size / mean)). The stack is walked from the probe, past its first frame (the
//   library's sampling function), so it starts at the entry point the program called.
// - Uprobes on jemalloc's own profiling functions, for programs that link jemalloc statically
//   (`je_sampled`, `je_freed`): jemalloc calls prof_malloc_sample_object for the allocations its
//   own sampling chose and prof_free_sampled_object when one of those is freed, and for no
//   other, so again only samples trap.
// - Uprobes on libc's malloc, calloc, realloc, posix_memalign and free in the target processes
//   (`mode=uprobe`): every call traps. The rest of this comment is about them.
//
// Sampling is by bytes: each thread counts down a budget drawn around `sample_bytes`; the
// allocation that exhausts it is sampled and carries every byte allocated since the thread's
// last sample (`acc`), so the sampled bytes add up to the bytes allocated and user space weighs
// each sample by acc / size. With `sample_bytes` 0 every allocation is sampled with weight 1.
//
// A sampled allocation's user stack is taken at the function's return, where the frame-pointer
// chain starts in the caller (at the entry the caller's own frame would be skipped). Where the
// caller's code lacks frame pointers (user space's plan in `dwarf_pids`), the user registers and
// stack are copied into the `copies` ring instead (copy.h) and the event names the copy by its
// cookie; user space unwinds it from DWARF CFI. The allocation is remembered in `live` by
// address; a free of a remembered address is reported, so user space knows which sampled
// allocations are still live.
enum stat_index {
    STAT_CALLS = 0,        // allocation calls seen
    STAT_SAMPLED = 1,      // allocations sampled and reported
    STAT_RING_FULL = 2,    // sampled allocations lost: the ring was full
    STAT_LIVE_FULL = 3,    // sampled allocations not tracked for frees: `live` was full
    STAT_FREES = 4,        // frees of sampled allocations reported
    STAT_FREE_LOST = 5,    // frees of sampled allocations lost: the ring was full
    STAT_USTACK_FAILED = 6,
    STAT_FORKS_FOLLOWED = 7,
    STAT_FAILED = 8,       // allocations that returned NULL
    STAT_TRAPS = 9,        // probe hits: each a trap into the kernel in the target
    STAT_COUNT = 10,
};
#include "base.h"
#include <linux/ptrace.h>
#include <stdbool.h>
#include <bpf/usdt.bpf.h>

enum event_kind {
    EV_ALLOC = 1,
    EV_FREE = 2,
    // A sampled allocation from a sampling library: `acc` holds the sampling mean.
    EV_SAMPLED = 3,
    // A batch of frees of sampled allocations, from a sampling library.
    EV_FREES = 4,
    // A sampled allocation of a statically linked jemalloc: `acc` holds its sampling mean,
    // `tctx` the profiling context jemalloc gave it.
    EV_JE_SAMPLED = 5,
    // One of those freed: jemalloc names it by its context and size, not by its address.
    EV_JE_FREED = 6,
};

#define FREE_BATCH 64
struct frees_event {
    __u32 kind;
    __u32 pid;
    __u32 n;
    __u32 pad;
    __u64 addrs[FREE_BATCH];
};
_Static_assert(sizeof(struct frees_event) == 528, "frees_event is FreesEvent in Rust");

struct free_event {
    __u32 kind;
    __u32 pid;
    __u64 addr;
};
_Static_assert(sizeof(struct free_event) == 16, "free_event is FreeEvent in Rust");
struct je_freed_event {
    __u32 kind;
    __u32 pid;
    __u64 tctx;
    __u64 size;
};
_Static_assert(sizeof(struct je_freed_event) == 24, "je_freed_event is JeFreedEvent in Rust");

struct alloc_event {
    __u32 kind;
    __u32 pid;
    __u64 addr;
    __u32 tid;
    __u32 stack_bytes;
    __u64 size;
    __u64 acc;
    __u64 cgroup_id;
    char comm[TASK_COMM_LEN];
    // The copy of the user stack (copy.h) this allocation's stack is unwound from, or 0 when
    // `stack` holds the frame-pointer walk.
    __u64 cookie;
    // jemalloc's profiling context of the allocation (EV_JE_SAMPLED), else 0.
    __u64 tctx;
    __u64 ctx; // the thread's context (threadctx.h), 0: none
    __u64 stack[MAX_STACK_DEPTH];
};
_Static_assert(sizeof(struct alloc_event) == 1104, "alloc_event is AllocEvent in Rust");

// Per thread: the sampling budget, and the allocation between its entry and its return.
struct thread_state {
    __s64 left;
    __u64 acc;
    __u64 size;
    // Bytes the pending allocation stands for; 0 when it is not sampled.
    __u64 sampled_acc;
    // posix_memalign's out pointer.
    __u64 memptr;
};

// In task-local storage: found through the task itself, with no hash lookup or LRU lock.
TASK_STORAGE(threads, struct thread_state);

struct live_key {
    __u64 addr;
    __u32 pid;
    __u32 pad;
};

// Sampled allocations still live, by (address, process).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 20);
    __type(key, struct live_key);
    __type(value, __u8);
} live SEC(".maps");

RINGBUF(events, 16 * 1024 * 1024);

#include "copy.h"
#include "threadctx.h"

const volatile __u64 sample_bytes = 65536;

// A budget drawn uniformly from [sample_bytes / 2, 3 * sample_bytes / 2): the mean is
// sample_bytes, and the jitter keeps the samples from locking onto a periodic pattern.
static __always_inline __s64 next_budget(void)
{
    __u64 n = sample_bytes;
    return (__s64)(n / 2 + (n ? bpf_get_prandom_u32() % n : 0));
}

static __always_inline int alloc_entry(__u64 size, __u64 memptr)
{
    bump(STAT_CALLS);
    struct thread_state *t = bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0,
                                                  BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!t)
        return 0;
    if (t->left == 0 && t->acc == 0 && t->size == 0)
        t->left = next_budget();
    t->size = size;
    t->memptr = memptr;
    t->sampled_acc = 0;
    t->acc += size;
    if (sample_bytes == 0) {
        t->sampled_acc = size;
        t->acc = 0;
        return 0;
    }
    t->left -= (__s64)size;
    if (t->left <= 0) {
        t->sampled_acc = t->acc;
        t->acc = 0;
        t->left = next_budget();
    }
    return 0;
}

static __always_inline int alloc_return(struct pt_regs *ctx, __u64 addr)
{
    struct thread_state *t = bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0, 0);
    if (!t || t->sampled_acc == 0)
        return 0;
    __u64 acc = t->sampled_acc;
    __u64 size = t->size;
    t->sampled_acc = 0;
    if (addr == 0) {
        bump(STAT_FAILED);
        return 0;
    }
    struct alloc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        bump(STAT_RING_FULL);
        return 0;
    }
    __u64 id = bpf_get_current_pid_tgid();
    e->kind = EV_ALLOC;
    e->pid = id >> 32;
    e->tid = (__u32)id;
    e->addr = addr;
    e->size = size;
    e->acc = acc;
    e->tctx = 0;
    e->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    e->ctx = thread_ctx(e->pid);
    // The copy is submitted before the event, so user space has it by the time it reads this.
    __u64 cookie = bpf_ktime_get_ns();
    long n = 0;
    if (copy_user_stack(bpf_get_current_task_btf(), e->pid, e->tid, cookie)) {
        e->cookie = cookie;
    } else {
        e->cookie = 0;
        n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), BPF_F_USER_STACK);
        if (n < 0) {
            bump(STAT_USTACK_FAILED);
            n = 0;
        }
    }
    e->stack_bytes = (__u32)n;
    struct live_key k = {.addr = addr, .pid = e->pid};
    __u8 one = 1;
    if (bpf_map_update_elem(&live, &k, &one, BPF_ANY) != 0)
        bump(STAT_LIVE_FULL);
    bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    bump(STAT_SAMPLED);
    return 0;
}

static __always_inline void on_free_addr(__u64 addr)
{
    if (addr == 0)
        return;
    struct live_key k = {.addr = addr, .pid = bpf_get_current_pid_tgid() >> 32};
    if (!bpf_map_lookup_elem(&live, &k))
        return;
    bpf_map_delete_elem(&live, &k);
    struct free_event e = {.kind = EV_FREE, .pid = k.pid, .addr = addr};
    if (bpf_ringbuf_output(&events, &e, sizeof(e), BPF_RB_NO_WAKEUP) != 0)
        bump(STAT_FREE_LOST);
    else
        bump(STAT_FREES);
}

SEC("uprobe")
int BPF_UPROBE(malloc_entry, __u64 size)
{
    bump(STAT_TRAPS);
    return alloc_entry(size, 0);
}

SEC("uretprobe")
int BPF_URETPROBE(malloc_return, __u64 ret)
{
    bump(STAT_TRAPS);
    return alloc_return(ctx, ret);
}

SEC("uprobe")
int BPF_UPROBE(calloc_entry, __u64 n, __u64 size)
{
    bump(STAT_TRAPS);
    return alloc_entry(n * size, 0);
}

SEC("uretprobe")
int BPF_URETPROBE(calloc_return, __u64 ret)
{
    bump(STAT_TRAPS);
    return alloc_return(ctx, ret);
}

// realloc(p, n) frees p (as far as live memory goes) and allocates n.
SEC("uprobe")
int BPF_UPROBE(realloc_entry, __u64 ptr, __u64 size)
{
    bump(STAT_TRAPS);
    on_free_addr(ptr);
    if (size == 0)
        return 0;
    return alloc_entry(size, 0);
}

SEC("uretprobe")
int BPF_URETPROBE(realloc_return, __u64 ret)
{
    bump(STAT_TRAPS);
    return alloc_return(ctx, ret);
}

SEC("uprobe")
int BPF_UPROBE(memalign_entry, __u64 memptr, __u64 align, __u64 size)
{
    bump(STAT_TRAPS);
    return alloc_entry(size, memptr);
}

SEC("uretprobe")
int BPF_URETPROBE(memalign_return, int rc)
{
    bump(STAT_TRAPS);
    struct thread_state *t = bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0, 0);
    if (!t)
        return 0;
    __u64 addr = 0;
    if (rc == 0 && t->memptr)
        bpf_probe_read_user(&addr, sizeof(addr), (void *)t->memptr);
    return alloc_return(ctx, addr);
}

SEC("uprobe")
int BPF_UPROBE(free_entry, __u64 ptr)
{
    bump(STAT_TRAPS);
    on_free_addr(ptr);
    return 0;
}

// Sends the `n` addresses at user address `batch` as one frees event.
static __always_inline void send_frees(__u64 batch, long n)
{
    if (n <= 0 || batch == 0)
        return;
    if (n > FREE_BATCH)
        n = FREE_BATCH;
    struct frees_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        bump(STAT_FREE_LOST);
        return;
    }
    e->kind = EV_FREES;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->pad = 0;
    if (bpf_probe_read_user(e->addrs, n * sizeof(__u64), (void *)batch) != 0)
        n = 0;
    e->n = n;
    bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    __u32 idx = STAT_FREES;
    __u64 *v = bpf_map_lookup_elem(&stats, &idx);
    if (v)
        *v += n;
}

// Whether a frame-pointer walk of `frames` addresses went through code process `tgid`'s plan
// says lacks frame pointers (only the first 32 frames are looked at: past them a wrong
// turn changes little).
static __always_inline int walk_crosses_plan(__u32 tgid, __u64 *stack, long frames)
{
    if (!dwarf)
        return 0;
    struct unwind_plan *plan = bpf_map_lookup_elem(&dwarf_pids, &tgid);
    if (!plan)
        return 0;
    if (plan->all)
        return 1;
    // A frame in such code is itself right (its return address was read through its callee's
    // frame); what follows it is not, and the walk often ends there. Even the outermost frame
    // counts (libc's __libc_start_call_main, as a rule): a walk that stops at a frame without
    // frame pointers cannot be told from one that lost its callers there.
    for (int i = 0; i < 32 && i < MAX_STACK_DEPTH; i++) {
        if (i >= frames)
            break;
        // A return address points just past its call: look one byte back.
        if (plan_covers(plan, stack[i] - 1))
            return 1;
    }
    return 0;
}

// Reports one allocation a sampler chose: `skip` leading frames of the walk are the sampler's
// own; with `copy`, the stack is always copied where DWARF unwinding is on (the allocator's code
// lacks frame pointers), else only where the walk crosses code the plan says lacks them.
static __always_inline void report_sampled(struct pt_regs *ctx, __u32 kind, __u64 ptr,
                                           __u64 size, __u64 mean, __u64 tctx, __u64 skip,
                                           int copy)
{
    struct alloc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        bump(STAT_RING_FULL);
        return;
    }
    __u64 id = bpf_get_current_pid_tgid();
    e->kind = kind;
    e->pid = id >> 32;
    e->tid = (__u32)id;
    e->addr = ptr;
    e->size = size;
    e->acc = mean;
    e->tctx = tctx;
    e->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    e->ctx = thread_ctx(e->pid);
    // A sampler with frame pointers starts the walk well: past its own frames, at the entry
    // point the program called. Where the walk then passes through code the plan says lacks
    // them (a caller built without, or a libc function that allocates), the rest of it cannot
    // be trusted, and the stack is copied for DWARF unwinding instead.
    e->cookie = 0;
    long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), BPF_F_USER_STACK | (skip & 0xff));
    if (n < 0) {
        bump(STAT_USTACK_FAILED);
        n = 0;
    }
    if (copy || walk_crosses_plan(e->pid, e->stack, n / 8)) {
        __u64 cookie = bpf_ktime_get_ns();
        if (copy_user_stack_if(bpf_get_current_task_btf(), e->pid, e->tid, cookie, 1)) {
            e->cookie = cookie;
            n = 0;
        }
    }
    e->stack_bytes = (__u32)n;
    bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    bump(STAT_SAMPLED);
}

// baton:alloc(ptr, size, mean[, freed, nfreed]) of a sampling library: one sampled allocation,
// and the frees of earlier samples waiting in the library since its last report. Those go
// first: the new allocation may have reused a freed address.
SEC("usdt")
int usdt_alloc(struct pt_regs *ctx)
{
    bump(STAT_TRAPS);
    bump(STAT_CALLS);
    long ptr = 0, size = 0, mean = 0, freed = 0, nfreed = 0;
    if (bpf_usdt_arg_cnt(ctx) >= 5) {
        bpf_usdt_arg(ctx, 3, &freed);
        bpf_usdt_arg(ctx, 4, &nfreed);
        send_frees(freed, nfreed);
    }
    bpf_usdt_arg(ctx, 0, &ptr);
    bpf_usdt_arg(ctx, 1, &size);
    bpf_usdt_arg(ctx, 2, &mean);
    if (ptr == 0) {
        bump(STAT_FAILED);
        return 0;
    }
    report_sampled(ctx, EV_SAMPLED, ptr, size, mean, 0, 1, 0);
    return 0;
}

// jemalloc linked into the program (5.3): prof_malloc_sample_object(tsd, ptr, size, usize,
// tctx), called for each allocation jemalloc's sampling chose, after it is made. The attach
// cookie is the offset from this function to jemalloc's `lg_prof_sample` (the current sampling
// period's log2, which `prof.reset` may change), so the mean is read as the sample is taken.
// The allocator's code lacks frame pointers: the stack is copied, and user space drops the
// frames inside jemalloc.
SEC("uprobe")
int BPF_UPROBE(je_sampled, __u64 tsd, __u64 ptr, __u64 size, __u64 usize, __u64 tctx)
{
    bump(STAT_TRAPS);
    bump(STAT_CALLS);
    __u64 lg = 64;
    __u64 at = PT_REGS_IP(ctx) + bpf_get_attach_cookie(ctx);
    if (bpf_probe_read_user(&lg, sizeof(lg), (void *)at) != 0 || lg > 62) {
        bump(STAT_FAILED);
        return 0;
    }
    report_sampled(ctx, EV_JE_SAMPLED, ptr, usize, 1ULL << lg, tctx, 0, 1);
    return 0;
}

// prof_free_sampled_object(tsd, usize, prof_info) of the same: a sampled allocation freed.
// jemalloc passes no address; the allocation's context (prof_info->alloc_tctx, after the
// allocation time) and size name it.
SEC("uprobe")
int BPF_UPROBE(je_freed, __u64 tsd, __u64 usize, __u64 info)
{
    bump(STAT_TRAPS);
    struct je_freed_event e = {.kind = EV_JE_FREED, .pid = bpf_get_current_pid_tgid() >> 32,
                               .size = usize};
    if (bpf_probe_read_user(&e.tctx, sizeof(e.tctx), (void *)(info + 8)) != 0)
        return 0;
    if (bpf_ringbuf_output(&events, &e, sizeof(e), BPF_RB_NO_WAKEUP) != 0)
        bump(STAT_FREE_LOST);
    else
        bump(STAT_FREES);
    return 0;
}

// baton:frees(batch, n) of the glibc sampler: a full batch of frees of sampled allocations.
SEC("usdt")
int usdt_frees(struct pt_regs *ctx)
{
    bump(STAT_TRAPS);
    long batch = 0, n = 0;
    bpf_usdt_arg(ctx, 0, &batch);
    bpf_usdt_arg(ctx, 1, &n);
    send_frees(batch, n);
    return 0;
}

// baton:free(ptr) of a sampling library: a sampled allocation freed (in exact mode, any).
SEC("usdt")
int usdt_free(struct pt_regs *ctx)
{
    bump(STAT_TRAPS);
    long ptr = 0;
    bpf_usdt_arg(ctx, 0, &ptr);
    struct free_event e = {.kind = EV_FREE, .pid = bpf_get_current_pid_tgid() >> 32, .addr = ptr};
    if (bpf_ringbuf_output(&events, &e, sizeof(e), BPF_RB_NO_WAKEUP) != 0)
        bump(STAT_FREE_LOST);
    else
        bump(STAT_FREES);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
