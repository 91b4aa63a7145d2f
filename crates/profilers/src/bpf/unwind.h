// SPDX-License-Identifier: GPL-2.0
// What every program that copies user stacks for DWARF unwinding shares (the CPU profiler and,
// through copy.h, the event profilers): the per-process plans user space writes into
// `dwarf_pids` (which code lacks frame pointers), the user registers, and the copy of the top
// of a user stack. Include it after <bpf/bpf_helpers.h>.
#ifndef BATON_UNWIND_H
#define BATON_UNWIND_H

// The user registers as the uapi <asm/ptrace.h> lays them out on x86-64.
struct user_regs {
    unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi;
    unsigned long orig_rax, rip, cs, eflags, rsp, ss;
};

// Code ranges without frame pointers, per process (tgid). `all` = 1 copies every event of the
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
_Static_assert(sizeof(struct unwind_plan) == 264, "unwind_plan is UnwindPlan in Rust");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, struct unwind_plan);
} dwarf_pids SEC(".maps");

// The registers user space starts unwinding a copied stack from; `CopiedRegs` in Rust.
struct copied_regs {
    __u64 ip;
    __u64 sp;
    __u64 bp;
};
_Static_assert(sizeof(struct copied_regs) == 24, "copied_regs is CopiedRegs in Rust");

static __always_inline void save_regs(struct copied_regs *to, struct user_regs *from)
{
    to->ip = from->rip;
    to->sp = from->rsp;
    to->bp = from->rbp;
}

// A copy holds the user stack from the stack pointer upwards, page by page, up to USTACK_BYTES
// or the end of the stack mapping.
#define PAGE 4096
#define USTACK_PAGES 8
#define USTACK_BYTES (USTACK_PAGES * PAGE)

// Whether `plan` wants events at `ip` unwound from a copy.
static __always_inline int plan_covers(struct unwind_plan *plan, __u64 ip)
{
    if (plan->all)
        return 1;
    __u32 n = plan->n;
    for (int i = 0; i < MAX_RANGES; i++) {
        if (i >= n)
            break;
        if (ip >= plan->ranges[i].start && ip < plan->ranges[i].end)
            return 1;
    }
    return 0;
}

// Copies at most `limit` bytes of the user stack at `sp` into `dst` (USTACK_BYTES): first the
// rest of the page the stack pointer is in, then page by page while they read; a read past the
// end of the stack mapping fails, and the copy ends there. Returns the bytes copied.
static __always_inline __u64 copy_stack_upto(__u8 *dst, __u64 sp, __u64 limit)
{
    __u64 first = PAGE - (sp & (PAGE - 1));
    if (first > limit)
        first = limit;
    if (first > PAGE || first == 0)
        return 0;
    if (bpf_probe_read_user(dst, first, (void *)sp) != 0)
        return 0;
    __u64 copied = first;
    for (int i = 0; i < USTACK_PAGES - 1; i++) {
        __u64 off = copied;
        if (off >= limit || off > USTACK_BYTES - PAGE)
            break;
        __u64 n = limit - off;
        if (n > PAGE)
            n = PAGE;
        if (bpf_probe_read_user(dst + off, n, (void *)(sp + off)) != 0)
            break;
        copied = off + n;
    }
    return copied;
}

// copy_stack_upto as far as USTACK_BYTES or the end of the stack mapping.
static __always_inline __u64 copy_stack_pages(__u8 *dst, __u64 sp)
{
    return copy_stack_upto(dst, sp, USTACK_BYTES);
}

#endif
