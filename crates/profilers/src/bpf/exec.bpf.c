// SPDX-License-Identifier: GPL-2.0
// Baton exec watcher: reports every successful execve (the process's tgid and the filename it
// exec'd) through a ring buffer, so exec triggers see processes that live for a millisecond.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define FILENAME_LEN 256

// CO-RE views of the kernel structs read here; fields are relocated by name at load time.
struct task_struct {
    int pid;
    int tgid;
} __attribute__((preserve_access_index));

struct linux_binprm {
    const char *filename;
} __attribute__((preserve_access_index));

struct exec_event {
    __u32 pid;
    __u32 pad;
    char filename[FILENAME_LEN];
};
_Static_assert(sizeof(struct exec_event) == 264, "exec_event is ExecEvent in Rust");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} events SEC(".maps");

// Events that found the ring buffer full: counted, never silent.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} dropped SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
    struct exec_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        __u32 k = 0;
        __u64 *d = bpf_map_lookup_elem(&dropped, &k);
        if (d)
            __sync_fetch_and_add(d, 1);
        return 0;
    }
    e->pid = p->tgid;
    e->pad = 0;
    bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), bprm->filename);
    bpf_ringbuf_submit(e, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
