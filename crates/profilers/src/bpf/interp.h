// SPDX-License-Identifier: GPL-2.0
// Interpreter frames: for a process user space has found an interpreter in (`interp_procs`,
// per process: the runtime's address and its layout), walks the current thread's interpreter
// frames and writes them, leaf first, as one u64 each: the code object's address (low 48 bits),
// the instruction offset (15 bits) and whether the frame is the first one its call of the
// evaluation loop runs (the top bit). User space names them and merges them into the native
// stack where the evaluation loop's frames are (`interp/` in Rust).
//
// The walk runs in bpf_loop callbacks rather than unrolled or bounded loops: the verifier checks
// each callback once, whatever the number of frames, so a deep stack costs no verifier budget
// and no tail calls are needed to pass a per-program frame limit.
//
// Only CPython for now: its thread state is found by walking the interpreter's thread list for
// the one whose `thread_id` (pthread_self(), the thread pointer on x86-64) is the task's fsbase,
// remembered per thread and checked again on each use. Include it after base.h.
#ifndef BATON_INTERP_H
#define BATON_INTERP_H

#define MAX_INTERP_FRAMES 128
#define MAX_INTERP_THREADS 1024
#define INTERP_ENTRY (1ULL << 63)
#define INTERP_CODE_MASK ((1ULL << 48) - 1)
#define INTERP_OFFSET_MAX 0x7fff

// How a version chains its frames (`Family` in Rust).
enum {
    PY_FRAME_OBJECTS = 1, // 3.8-3.10: PyFrameObject, one evaluation-loop call each
    PY_ENTRY_311 = 2,     // 3.11: tstate->cframe->current_frame, `is_entry` marks a call's first
    PY_SHIM_312 = 3,      // 3.12: as 3.11, but each call starts with a C-stack-owned shim frame
    PY_SHIM_313 = 4,      // 3.13: tstate->current_frame, shims as in 3.12
};
#define PY_OWNED_BY_CSTACK 3

// What a walk found (`InterpStatus` in Rust).
enum {
    INTERP_OK = 0,
    INTERP_NO_THREAD = 1, // the thread has no interpreter state (a native thread)
    INTERP_READ_FAILED = 2,
    INTERP_TRUNCATED = 3, // more than MAX_INTERP_FRAMES frames: the root-most are left off
};

// One process's interpreter, written by user space (`InterpProc` in Rust).
struct interp_proc {
    __u64 runtime;
    __u32 family;
    __u32 runtime_interpreters_head;
    __u32 interp_threads_head;
    __u32 tstate_next;
    __u32 tstate_thread_id;
    __u32 tstate_frame;
    __u32 cframe_current_frame;
    __u32 frame_code;
    __u32 frame_instr;
    __u32 frame_previous;
    __u32 frame_owner;
    __u32 frame_is_entry;
    __u32 code_adaptive;
    __u32 pad;
};
_Static_assert(sizeof(struct interp_proc) == 64, "interp_proc is InterpProc in Rust");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, struct interp_proc);
} interp_procs SEC(".maps");

// The thread state last found for a thread, checked against its fsbase before use.
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u64);
} interp_tstates SEC(".maps");

struct thread_struct___interp {
    unsigned long fsbase;
} __attribute__((preserve_access_index));
struct task_struct___interp {
    struct thread_struct___interp thread;
} __attribute__((preserve_access_index));

static __always_inline __u64 interp_read_ptr(__u64 addr, int *failed)
{
    __u64 v = 0;
    if (bpf_probe_read_user(&v, sizeof(v), (void *)addr) != 0)
        *failed = 1;
    return v;
}

struct tstate_walk {
    struct interp_proc *p;
    __u64 fsbase;
    __u64 tstate;
    __u64 found;
    int failed;
};

static long tstate_step(__u64 i, struct tstate_walk *w)
{
    if (!w->tstate)
        return 1;
    __u64 id = interp_read_ptr(w->tstate + w->p->tstate_thread_id, &w->failed);
    if (w->failed)
        return 1;
    if (id == w->fsbase) {
        w->found = w->tstate;
        return 1;
    }
    w->tstate = interp_read_ptr(w->tstate + w->p->tstate_next, &w->failed);
    return w->failed ? 1 : 0;
}

struct frame_walk {
    struct interp_proc *p;
    __u64 *out;
    __u64 frame;
    __u32 n;
    int failed;
};

static long frame_step(__u64 i, struct frame_walk *w)
{
    struct interp_proc *p = w->p;
    if (!w->frame)
        return 1;
    __u64 code = interp_read_ptr(w->frame + p->frame_code, &w->failed);
    __u64 prev = interp_read_ptr(w->frame + p->frame_previous, &w->failed);
    if (w->failed)
        return 1;
    __u64 entry = 0;
    __s64 offset = 0;
    if (p->family == PY_FRAME_OBJECTS) {
        __s32 lasti = 0;
        if (bpf_probe_read_user(&lasti, sizeof(lasti), (void *)(w->frame + p->frame_instr)))
            w->failed = 1;
        offset = lasti;
        entry = INTERP_ENTRY;
    } else {
        __u8 owner = 0;
        if (bpf_probe_read_user(&owner, 1, (void *)(w->frame + p->frame_owner)))
            w->failed = 1;
        if (p->family != PY_ENTRY_311 && owner == PY_OWNED_BY_CSTACK) {
            // A shim: the frame before it (root-wards of the ones already written) was the first
            // its evaluation-loop call ran.
            __u32 last = w->n - 1;
            if (w->n > 0 && last < MAX_INTERP_FRAMES)
                w->out[last] |= INTERP_ENTRY;
            w->frame = prev;
            return w->failed ? 1 : 0;
        }
        if (p->family == PY_ENTRY_311) {
            __u8 is_entry = 0;
            if (bpf_probe_read_user(&is_entry, 1, (void *)(w->frame + p->frame_is_entry)))
                w->failed = 1;
            entry = is_entry ? INTERP_ENTRY : 0;
        }
        __u64 instr = interp_read_ptr(w->frame + p->frame_instr, &w->failed);
        __u64 start = code + p->code_adaptive;
        offset = instr > start ? (__s64)((instr - start) >> 1) : 0;
    }
    if (w->failed)
        return 1;
    if (offset < 0)
        offset = 0;
    if (offset > INTERP_OFFSET_MAX)
        offset = INTERP_OFFSET_MAX;
    __u32 n = w->n;
    if (n >= MAX_INTERP_FRAMES)
        return 1;
    w->out[n] = (code & INTERP_CODE_MASK) | ((__u64)offset << 48) | entry;
    w->n = n + 1;
    w->frame = prev;
    return 0;
}

// Writes the current thread's interpreter frames into `out` (MAX_INTERP_FRAMES slots), leaf
// first, and returns how many; `*status` says why there are none or fewer.
static __always_inline __u32 interp_walk(__u32 tgid, __u32 tid, __u64 *out, __u32 *status)
{
    *status = INTERP_OK;
    struct interp_proc *p = bpf_map_lookup_elem(&interp_procs, &tgid);
    if (!p)
        return 0;
    struct task_struct___interp *task = (void *)bpf_get_current_task();
    __u64 fsbase = BPF_CORE_READ(task, thread.fsbase);
    int failed = 0;
    __u64 tstate = 0;
    __u64 *known = bpf_map_lookup_elem(&interp_tstates, &tid);
    if (known && *known &&
        interp_read_ptr(*known + p->tstate_thread_id, &failed) == fsbase && !failed)
        tstate = *known;
    if (!tstate) {
        failed = 0;
        __u64 interp = interp_read_ptr(p->runtime + p->runtime_interpreters_head, &failed);
        struct tstate_walk tw = {.p = p, .fsbase = fsbase};
        if (!failed && interp)
            tw.tstate = interp_read_ptr(interp + p->interp_threads_head, &failed);
        if (failed) {
            *status = INTERP_READ_FAILED;
            return 0;
        }
        bpf_loop(MAX_INTERP_THREADS, tstate_step, &tw, 0);
        if (!tw.found) {
            *status = tw.failed ? INTERP_READ_FAILED : INTERP_NO_THREAD;
            return 0;
        }
        tstate = tw.found;
        bpf_map_update_elem(&interp_tstates, &tid, &tstate, BPF_ANY);
    }
    __u64 frame = interp_read_ptr(tstate + p->tstate_frame, &failed);
    if (!failed && frame && (p->family == PY_ENTRY_311 || p->family == PY_SHIM_312))
        frame = interp_read_ptr(frame + p->cframe_current_frame, &failed);
    if (failed) {
        *status = INTERP_READ_FAILED;
        return 0;
    }
    struct frame_walk fw = {.p = p, .out = out, .frame = frame};
    bpf_loop(MAX_INTERP_FRAMES + 16, frame_step, &fw, 0);
    if (fw.failed)
        *status = INTERP_READ_FAILED;
    else if (fw.frame && fw.n >= MAX_INTERP_FRAMES)
        *status = INTERP_TRUNCATED;
    return fw.n;
}

#endif
