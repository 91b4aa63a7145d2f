// SPDX-License-Identifier: GPL-2.0
// Baton off-CPU profiler: on sched_switch, a thread that goes to sleep (interruptible or
// uninterruptible) has its stacks and the time noted; when it is switched back in, the time it
// was blocked is added to (pid, tid, comm, cgroup, state, kernel stack, user stack) in one of
// two buffers, so user space can drain one while the other fills. Blocks shorter than
// `min_block_ns` are counted but not recorded.
//
// Taking two stacks at every switch is what costs (about 3.5 us here); where threads of interest
// switch faster than user space's budget, only one switch-out in `sample_every` is tracked,
// chosen at random, and its block counts `sample_every` times, so sums stay unbiased.
enum stat_index {
    STAT_SWITCHES_OUT = 0,  // threads of interest that went to sleep
    STAT_BLOCKS = 1,        // blocks recorded (at least min_block_ns)
    STAT_SHORT = 2,         // blocks under min_block_ns, not recorded
    STAT_LOST_MAP_FULL = 3, // blocks lost because the counts map was full
    STAT_STARTS_FULL = 4,   // sleeps not tracked: no task storage could be had
    STAT_STALE_STACKS = 5,  // blocks counted without stacks (stack map cleared meanwhile)
    STAT_KSTACK_FAILED = 6,
    STAT_USTACK_FAILED = 7,
    STAT_SKIPPED = 8,       // switch-outs not tracked (sampling)
    STAT_FORKS_FOLLOWED = 9,
    STAT_SPANS_LOST = 10,   // recorded blocks left off the timeline: its ring was full
    STAT_COUNT = 11,
};
#include "base.h"

#define MAX_ENTRIES 16384
#define STACK_ENTRIES 16384
#define TASK_INTERRUPTIBLE 0x1
#define TASK_UNINTERRUPTIBLE 0x2

// Blocks are counted under a row_key (base.h) whose kind is the state they slept in.
struct block_value {
    __u64 ns;
    __u64 count;
};
_Static_assert(sizeof(struct block_value) == 16, "block_value is BlockValue in Rust");

// A thread asleep: when it went off CPU, and the key it will be counted under. `copied`: its
// user stack went to user space as a copy (DWARF unwinding), so its block is reported through
// the ring too, under the same `ts` as cookie.
struct start {
    __u64 ts;
    __u32 generation;
    __u32 weight;
    struct row_key key;
    __u32 copied;
    __u32 pad;
};

#include "copy.h"
#include "threadctx.h"

#define COUNTS_MAP(name)                                                                       \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_HASH);                                                       \
        __uint(max_entries, MAX_ENTRIES);                                                      \
        __type(key, struct row_key);                                                         \
        __type(value, struct block_value);                                                     \
    } name SEC(".maps")

COUNTS_MAP(counts0);
COUNTS_MAP(counts1);

// One stack map for both buffers: a sleeping thread's stack ids must stay valid until it wakes,
// whatever the drains in between. User space clears it only when it fills, and bumps
// `generation`; a thread that went to sleep before a clear is counted without its stacks.
STACK_MAP(stacks, STACK_ENTRIES);

// Per-thread start of the current block, in task-local storage: a switch-in finds it through
// the task itself, with no hash lookup. `ts` is 0 when the thread is not being tracked.
TASK_STORAGE(starts, struct start);


// A recorded block for the timeline: when it began, how long it lasted, and the key it is
// counted under in buffer `buffer`.
struct span {
    __u64 start;
    __u64 dur;
    __u32 pid;
    __u32 tid;
    __s32 kernel_stack;
    __s32 user_stack;
    __u32 state;
    __u32 buffer;
};
_Static_assert(sizeof(struct span) == 40, "span is Span in Rust");

// Sized by user space before load.
RINGBUF(spans, 256 * 1024);

const volatile __u8 emit_spans = 0;
const volatile __u64 min_block_ns = 1000000;
volatile __u32 active_buffer = 0;
volatile __u32 generation = 0;
// Track one switch-out in this many; set by user space from the observed switch rate.
volatile __u32 sample_every = 1;

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, _Bool preempt, struct task_struct *prev, struct task_struct *next)
{
    __u64 now = bpf_ktime_get_ns();

    // `prev` is still current here: its stacks are the ones the helpers see.
    __u32 prev_tid = prev->pid;
    __u32 prev_tgid = prev->tgid;
    __u32 state = prev->__state & (TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE);
    __u32 every = sample_every;
    if (prev_tid != 0 && state != 0 &&
        (!filter_targets || bpf_map_lookup_elem(&targets, &prev_tgid))) {
        bump(STAT_SWITCHES_OUT);
        if (every > 1 && bpf_get_prandom_u32() % every != 0) {
            bump(STAT_SKIPPED);
            goto switch_in;
        }
        struct start *s = task_start(&starts, prev, STAT_STARTS_FULL);
        if (!s)
            goto switch_in;
        s->generation = generation;
        s->weight = every > 1 ? every : 1;
        s->key.pid = prev_tgid;
        s->key.tid = prev_tid;
        s->key.cgroup_id = bpf_get_current_cgroup_id();
        s->key.kind = state;
        s->key.buffer = 0;
        bpf_get_current_comm(&s->key.comm, sizeof(s->key.comm));
        s->key.ctx = thread_ctx(prev_tgid);
        s->key.kernel_stack = bpf_get_stackid(ctx, &stacks, 0);
        if (s->key.kernel_stack < 0)
            bump(STAT_KSTACK_FAILED);
        s->key.user_stack = user_stack_or_copy(ctx, &stacks, prev, prev_tgid, prev_tid, now,
                                               &s->copied);
        s->ts = now;
    }

switch_in:;
    struct start *s = bpf_task_storage_get(&starts, next, 0, 0);
    if (!s || s->ts == 0)
        return 0;
    __u64 delta = now - s->ts;
    s->ts = 0;
    struct row_key key = s->key;
    __u32 gen = s->generation;
    __u64 weight = s->weight;
    // The switch-out's time, which named the copy.
    __u64 cookie = now - delta;
    __u32 copied = s->copied;
    if (delta < min_block_ns) {
        bump(STAT_SHORT);
        return 0;
    }
    if (gen != generation) {
        key.kernel_stack = -1;
        key.user_stack = -1;
        bump(STAT_STALE_STACKS);
    }
    if (emit_spans) {
        struct span *sp = bpf_ringbuf_reserve(&spans, sizeof(*sp), 0);
        if (sp) {
            sp->start = cookie;
            sp->dur = delta;
            sp->pid = key.pid;
            sp->tid = key.tid;
            sp->kernel_stack = key.kernel_stack;
            sp->user_stack = key.user_stack;
            sp->state = key.kind;
            sp->buffer = copied ? 2 : active_buffer;
            bpf_ringbuf_submit(sp, BPF_RB_NO_WAKEUP);
        } else {
            bump(STAT_SPANS_LOST);
        }
    }
    if (copied) {
        // User space pairs this with the copy sent at the switch-out and counts the block.
        if (send_end(key.pid, key.tid, cookie, key.kind, key.cgroup_id, key.kernel_stack,
                     delta * weight, weight, 0, key.comm, key.ctx) == 0) {
            bump(STAT_BLOCKS);
            return 0;
        }
    }
    void *counts = active_buffer ? (void *)&counts1 : (void *)&counts0;
    struct block_value *v = bpf_map_lookup_elem(counts, &key);
    if (!v) {
        struct block_value zero = {};
        bpf_map_update_elem(counts, &key, &zero, BPF_NOEXIST);
        v = bpf_map_lookup_elem(counts, &key);
        if (!v) {
            bump(STAT_LOST_MAP_FULL);
            return 0;
        }
    }
    __sync_fetch_and_add(&v->ns, delta * weight);
    __sync_fetch_and_add(&v->count, weight);
    bump(STAT_BLOCKS);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
