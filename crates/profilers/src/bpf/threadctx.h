// SPDX-License-Identifier: GPL-2.0
// Thread context: labels a process publishes for each of its threads (a request's endpoint, its
// trace and span IDs), read at each sample or event. The record is OpenTelemetry's thread-local
// context record: trace ID (16 bytes), span ID (8), valid (1), trace flags (1), attributes' size
// (2), then attributes as (key index, length, bytes). A thread-local pointer (`otel_thread_ctx_v1`
// in Baton's helpers) points at the thread's record; user space finds, for each process that
// publishes one, that pointer's offset from the thread pointer (`ctx_procs`).
//
// A record read is interned: its bytes (with the pid, since key indexes are per process) are
// hashed, the record is kept under the hash in `ctx_records`, and the hash goes into the row's
// key, so rows aggregate per context and user space decodes each context once. Include it after
// base.h.
#ifndef BATON_THREADCTX_H
#define BATON_THREADCTX_H

#define CTX_HEAD_BYTES 28
#define CTX_ATTRS_MAX 220
#define CTX_VALID_AT 24
#define CTX_SIZE_AT 26

// What a context read found (`ctx_stats`; `ThreadContexts` in Rust reads them).
enum {
    CTX_STAT_READ = 0,    // contexts read and interned
    CTX_STAT_EMPTY = 1,   // the thread had no record, or an invalid or empty one
    CTX_STAT_FAILED = 2,  // the pointer or the record could not be read
    CTX_STAT_COUNT = 3,
};

// One process that publishes thread context (`CtxProc` in Rust).
struct ctx_proc {
    __s64 tls_offset; // where the thread's record pointer is, from its thread pointer
    __u64 cookie;     // which process this pid is: user space's number for it
};
_Static_assert(sizeof(struct ctx_proc) == 16, "ctx_proc is CtxProc in Rust");

// A record as read (`CtxRecord` in Rust): `attrs_read` bytes of attributes were read, of the
// `attrs-data-size` the record's head gives; `pid` and `cookie` say whose it is.
struct ctx_record {
    __u32 pid;
    __u16 attrs_read;
    __u16 pad;
    __u64 cookie; // the process's (`ctx_proc`): a reused pid interns apart
    __u8 head[CTX_HEAD_BYTES];
    __u8 attrs[CTX_ATTRS_MAX];
};
_Static_assert(sizeof(struct ctx_record) == 264, "ctx_record is CtxRecord in Rust");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, struct ctx_proc);
} ctx_procs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8192);
    __type(key, __u64);
    __type(value, struct ctx_record);
} ctx_records SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ctx_record);
} ctx_scratch SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, CTX_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} ctx_stats SEC(".maps");

struct thread_struct___ctx {
    unsigned long fsbase;
} __attribute__((preserve_access_index));
struct task_struct___ctx {
    struct thread_struct___ctx thread;
} __attribute__((preserve_access_index));

static __always_inline void ctx_bump(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&ctx_stats, &idx);
    if (v)
        *v += 1;
}

// The current thread's context, interned: 0 when its process publishes none or the thread has
// none. Call it only while the thread is stopped in the kernel (a sample, a probe, a switch
// out), so the record is not being written.
static __always_inline __u64 thread_ctx(__u32 tgid)
{
    struct ctx_proc *p = bpf_map_lookup_elem(&ctx_procs, &tgid);
    if (!p)
        return 0;
    struct task_struct___ctx *task = (void *)bpf_get_current_task();
    __u64 fsbase = BPF_CORE_READ(task, thread.fsbase);
    __u64 ptr = 0;
    if (bpf_probe_read_user(&ptr, sizeof(ptr), (void *)(fsbase + p->tls_offset)) != 0) {
        ctx_bump(CTX_STAT_FAILED);
        return 0;
    }
    if (!ptr) {
        ctx_bump(CTX_STAT_EMPTY);
        return 0;
    }
    __u32 zero = 0;
    struct ctx_record *r = bpf_map_lookup_elem(&ctx_scratch, &zero);
    if (!r)
        return 0;
    __builtin_memset(r, 0, sizeof(*r));
    if (bpf_probe_read_user(r->head, CTX_HEAD_BYTES, (void *)ptr) != 0) {
        ctx_bump(CTX_STAT_FAILED);
        return 0;
    }
    if (r->head[CTX_VALID_AT] != 1) {
        ctx_bump(CTX_STAT_EMPTY);
        return 0;
    }
    __u32 n = r->head[CTX_SIZE_AT] | ((__u32)r->head[CTX_SIZE_AT + 1] << 8);
    if (n > CTX_ATTRS_MAX)
        n = CTX_ATTRS_MAX;
    if (n > 0 && bpf_probe_read_user(r->attrs, n, (void *)(ptr + CTX_HEAD_BYTES)) != 0) {
        ctx_bump(CTX_STAT_FAILED);
        return 0;
    }
    r->pid = tgid;
    r->cookie = p->cookie;
    r->attrs_read = n;
    // FNV-1a over 8-byte words, with a shift to spread the high bits.
    __u64 h = 0xcbf29ce484222325ULL;
    __u64 *w = (__u64 *)r;
    for (int i = 0; i < (int)(sizeof(*r) / 8); i++) {
        h = (h ^ w[i]) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    if (h == 0)
        h = 1;
    if (!bpf_map_lookup_elem(&ctx_records, &h))
        bpf_map_update_elem(&ctx_records, &h, r, BPF_ANY);
    ctx_bump(CTX_STAT_READ);
    return h;
}

#endif
