// SPDX-License-Identifier: Apache-2.0
// Baton's allocation reporter for processes that link jemalloc dynamically: a library preloaded
// into the process (LD_PRELOAD=libbaton_jemalloc.so, with MALLOC_CONF=prof:true,...) that lets
// jemalloc sample, by its own byte sampling (`prof`, `lg_prof_sample`), and tells Baton only of
// the sampled allocations and of the frees of those, through the USDT probes of the glibc
// sampler (baton_malloc.c):
//
//   baton:alloc(ptr, size, mean, freed, n)
//                                 a sampled allocation: its usable size (what jemalloc samples
//                                 by) and the mean, 2^lg_prof_sample bytes; and the frees of
//                                 earlier samples since the last report: `n` pointers at `freed`
//   baton:frees(freed, n)         a full batch of those frees (64), or the rest at exit
//
// Frees wait in one batch, shared by the threads, and travel with the next sample's probe, so a
// sample costs one trap rather than two. The batch is reported under its lock, and a freed
// pointer joins it before jemalloc has it back: whichever report carries a later sample of the
// same address carries its free too, and BPF sends the frees first.
//
// How a sampled allocation is known: jemalloc calls its backtrace hook
// (`experimental.hooks.prof_backtrace`) on the allocating thread, before the allocation, for
// each allocation it samples and for no other. The hook installed here does no unwinding (Baton
// takes the stack in BPF; jemalloc's own unwinding through libgcc is most of a sample's cost):
// it only sets a thread-local flag. The exported allocation functions here forward to jemalloc's
// and then test that flag: one thread-local load on an unsampled allocation.
//
// How a sampled pointer is known at free: jemalloc 5.3 gives every sampled allocation page
// alignment (small ones are promoted to a page-aligned extent), so a pointer that is not
// page-aligned is never looked up. A page-aligned one is looked up in a lock-free set of the
// live reported pointers (one cache line per bucket), and the free is reported only when found.
//
// Nothing is reported while no Baton is attached (the probes have USDT semaphores). Without
// jemalloc, or with jemalloc's profiling off, every function only forwards to the allocator the
// process would have used without this library, and nothing is reported. Nothing here allocates.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define _SDT_HAS_SEMAPHORES 1
#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TLS __thread __attribute__((tls_model("initial-exec")))
// Hidden, and kept under their own names: the x86-64 entry points below (assembly) use them.
#define SHARED __attribute__((visibility("hidden"), used))

// The USDT semaphores: the kernel counts attached probes here. Hidden, so that each library's
// probes read their own even where another object defines the same names.
__attribute__((visibility("hidden"))) unsigned short baton_alloc_semaphore
    __attribute__((section(".probes")));
__attribute__((visibility("hidden"))) unsigned short baton_frees_semaphore
    __attribute__((section(".probes")));
#include <sys/sdt.h>

#define PAGE 4096UL

// Sampled allocations jemalloc made but that were not reported: the set of live sampled
// pointers had no room, or the allocation did not have the alignment of a sample.
EXPORT volatile uint64_t baton_jemalloc_dropped;
// 1 once jemalloc with profiling was found and the hook installed (read by tests and Baton).
EXPORT volatile int baton_jemalloc_active;

// Set by the backtrace hook when jemalloc samples an allocation on this thread.
SHARED TLS unsigned char sampled;

static inline int listening(void)
{
    return __atomic_load_n(&baton_alloc_semaphore, __ATOMIC_RELAXED) != 0;
}

// ---- The allocator this library forwards to -------------------------------------------------

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*memalign_fn)(size_t, size_t);
typedef size_t (*usable_fn)(void *);
typedef void *(*mallocx_fn)(size_t, int);
typedef void *(*rallocx_fn)(void *, size_t, int);
typedef size_t (*xallocx_fn)(void *, size_t, size_t, int);
typedef size_t (*sallocx_fn)(const void *, int);
typedef void (*dallocx_fn)(void *, int);
typedef void (*sdallocx_fn)(void *, size_t, int);
typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);
typedef int (*mallctlnametomib_fn)(const char *, size_t *, size_t *);
typedef int (*mallctlbymib_fn)(const size_t *, size_t, void *, size_t *, void *, size_t);
// C++ operators: new(size), new(size, nothrow), new(size, align), new(size, align, nothrow);
// delete(p), delete(p, nothrow), delete(p, align), delete(p, align, nothrow), delete(p, size),
// delete(p, size, align).
typedef void *(*new_fn)(size_t);
typedef void *(*new_nt_fn)(size_t, const void *);
typedef void *(*new_al_fn)(size_t, size_t);
typedef void *(*new_al_nt_fn)(size_t, size_t, const void *);
typedef void (*del_fn)(void *);
typedef void (*del_nt_fn)(void *, const void *);
typedef void (*del_al_fn)(void *, size_t);
typedef void (*del_al_nt_fn)(void *, size_t, const void *);
typedef void (*del_sz_fn)(void *, size_t);
typedef void (*del_sz_al_fn)(void *, size_t, size_t);

// Each entry point's next definition (RTLD_NEXT): null until resolved, which READY tests.
#define NEXT(name, type) SHARED type next_##name;
#define ALL_NEXT(X)                                                                              \
    X(free, free_fn) /* first: no block from `malloc` is then freed before `free` is known */    \
    X(malloc, malloc_fn)                                                                         \
    X(calloc, calloc_fn)                                                                         \
    X(realloc, realloc_fn)                                                                       \
    X(posix_memalign, posix_memalign_fn)                                                         \
    X(aligned_alloc, memalign_fn)                                                                \
    X(memalign, memalign_fn)                                                                     \
    X(valloc, malloc_fn)                                                                         \
    X(malloc_usable_size, usable_fn)                                                             \
    X(mallocx, mallocx_fn)                                                                       \
    X(rallocx, rallocx_fn)                                                                       \
    X(xallocx, xallocx_fn)                                                                       \
    X(sallocx, sallocx_fn)                                                                       \
    X(dallocx, dallocx_fn)                                                                       \
    X(sdallocx, sdallocx_fn)                                                                     \
    X(_Znwm, new_fn)                                                                             \
    X(_Znam, new_fn)                                                                             \
    X(_ZnwmRKSt9nothrow_t, new_nt_fn)                                                            \
    X(_ZnamRKSt9nothrow_t, new_nt_fn)                                                            \
    X(_ZnwmSt11align_val_t, new_al_fn)                                                           \
    X(_ZnamSt11align_val_t, new_al_fn)                                                           \
    X(_ZnwmSt11align_val_tRKSt9nothrow_t, new_al_nt_fn)                                          \
    X(_ZnamSt11align_val_tRKSt9nothrow_t, new_al_nt_fn)                                          \
    X(_ZdlPv, del_fn)                                                                            \
    X(_ZdaPv, del_fn)                                                                            \
    X(_ZdlPvRKSt9nothrow_t, del_nt_fn)                                                           \
    X(_ZdaPvRKSt9nothrow_t, del_nt_fn)                                                           \
    X(_ZdlPvSt11align_val_t, del_al_fn)                                                          \
    X(_ZdaPvSt11align_val_t, del_al_fn)                                                          \
    X(_ZdlPvSt11align_val_tRKSt9nothrow_t, del_al_nt_fn)                                         \
    X(_ZdaPvSt11align_val_tRKSt9nothrow_t, del_al_nt_fn)                                         \
    X(_ZdlPvm, del_sz_fn)                                                                        \
    X(_ZdaPvm, del_sz_fn)                                                                        \
    X(_ZdlPvmSt11align_val_t, del_sz_al_fn)                                                      \
    X(_ZdaPvmSt11align_val_t, del_sz_al_fn)
ALL_NEXT(NEXT)

static inline int page_aligned(const void *p) { return ((uintptr_t)p & (PAGE - 1)) == 0; }

// ---- Marks: which pages may hold a reported pointer -----------------------------------------

// Per page of the address space, taken modulo 2^22 pages (16 GiB): how many live reported
// pointers or `boot` blocks start on a page with that index; 255 sticks. A free reads its
// pointer's mark, one byte, always: a test of page alignment first would be a branch that a
// mixed-size workload mispredicts (many small blocks are page-aligned), the mark's almost never
// is. In .bss: pages of it never marked are never written, and read as the zero page.
#define MARK_BITS 22
SHARED unsigned char marks[1UL << MARK_BITS];
_Static_assert(MARK_BITS == 22, "free's assembly (x86-64) masks 22 bits");

static inline unsigned char *mark_of(const void *p)
{
    return &marks[((uintptr_t)p >> 12) & ((1UL << MARK_BITS) - 1)];
}

static inline int marked(const void *p) { return __atomic_load_n(mark_of(p), __ATOMIC_RELAXED); }

static void mark_add(const void *p, int by)
{
    unsigned char *m = mark_of(p), v = __atomic_load_n(m, __ATOMIC_RELAXED);
    while (v != 255 && (by > 0 || v != 0) &&
           !__atomic_compare_exchange_n(m, &v, (unsigned char)(v + by), 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED))
        ;
}

// ---- Memory before the allocator is known ---------------------------------------------------

// dlsym may allocate while the entry points are being resolved; those requests are served from
// here, a page each (so that free's fast path, which only lets pointers that are not
// page-aligned through, needs no test for them), and never given back.
#define BOOT_SIZE (256 * 1024)
static unsigned char boot[BOOT_SIZE] __attribute__((aligned(4096)));
static size_t boot_used;

static void *boot_alloc(size_t n, size_t align)
{
    if (align < PAGE)
        align = PAGE;
    size_t at = __atomic_load_n(&boot_used, __ATOMIC_RELAXED);
    for (;;) {
        size_t start = (at + align - 1) & ~(align - 1);
        if (n > BOOT_SIZE || start + n > BOOT_SIZE)
            return 0;
        if (__atomic_compare_exchange_n(&boot_used, &at, start + n, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            __atomic_store_n(mark_of(boot + start), 255, __ATOMIC_RELEASE);
            return boot + start;
        }
    }
}

static inline int in_boot(const void *p) { return (uintptr_t)p - (uintptr_t)boot < BOOT_SIZE; }

// ---- The set of live reported pointers ------------------------------------------------------

// Buckets of one cache line: seven pointers and a flag telling that an insert went on to the
// next bucket. A pointer lives in its hash's bucket or, when that is full, in the next one.
// Slots are claimed by compare-and-swap and emptied by their pointer's free.
#define BUCKET_SLOTS 7
struct bucket {
    uintptr_t slot[BUCKET_SLOTS];
    uintptr_t spilled;
} __attribute__((aligned(64)));

#define DEFAULT_BUCKETS (1UL << 17) // 917,504 live samples in 8 MiB of address space
static struct bucket *buckets;
static uintptr_t bucket_mask;

static inline struct bucket *home(uintptr_t p)
{
    return &buckets[((p >> 12) * 0x9E3779B97F4A7C15ULL >> 20) & bucket_mask];
}

static inline struct bucket *after(struct bucket *b)
{
    return b == &buckets[bucket_mask] ? buckets : b + 1;
}

static int set_insert(uintptr_t p)
{
    struct bucket *b = home(p);
    for (int round = 0; round < 2; round++, b = after(b)) {
        for (int i = 0; i < BUCKET_SLOTS; i++) {
            uintptr_t empty = 0;
            if (__atomic_load_n(&b->slot[i], __ATOMIC_RELAXED) == 0 &&
                __atomic_compare_exchange_n(&b->slot[i], &empty, p, 0, __ATOMIC_RELEASE,
                                            __ATOMIC_RELAXED)) {
                mark_add((void *)p, 1);
                return 1;
            }
        }
        if (round == 0 && !__atomic_load_n(&b->spilled, __ATOMIC_RELAXED))
            __atomic_store_n(&b->spilled, 1, __ATOMIC_RELEASE);
    }
    return 0;
}

static inline int bucket_take(struct bucket *b, uintptr_t p)
{
    for (int i = 0; i < BUCKET_SLOTS; i++) {
        if (__atomic_load_n(&b->slot[i], __ATOMIC_ACQUIRE) == p) {
            __atomic_store_n(&b->slot[i], 0, __ATOMIC_RELEASE);
            mark_add((void *)p, -1);
            return 1;
        }
    }
    return 0;
}

// Removes `p` when it is a live reported pointer; says whether it was.
static inline int set_take(uintptr_t p)
{
    if (!buckets || !page_aligned((void *)p))
        return 0;
    struct bucket *b = home(p);
    if (bucket_take(b, p))
        return 1;
    return __atomic_load_n(&b->spilled, __ATOMIC_ACQUIRE) && bucket_take(after(b), p);
}

// ---- Reporting ------------------------------------------------------------------------------

// 1 once jemalloc is found with profiling on and the hook installed.
static int tracking;
// jemalloc's `prof.lg_sample` (the current sampling period, which `prof.reset` may change) and
// `prof.active`.
static size_t lg_sample_mib[2], active_mib[2];
static size_t lg_sample_miblen, active_miblen;
static mallctlbymib_fn jemalloc_mallctlbymib;

// ---- Sampling only while someone listens ----------------------------------------------------

// jemalloc's sampling costs even when nothing reports its samples (about 0.4 us each, most of it
// jemalloc's own bookkeeping), so it runs only while a probe is attached: every allocation
// compares the alloc probe's semaphore with the value last seen, and on a change `prof.active`
// follows it. BATON_JEMALLOC_KEEP_ACTIVE leaves `prof.active` as MALLOC_CONF set it.
SHARED unsigned short seen_semaphore;
static int keep_active;
static pthread_mutex_t active_lock = PTHREAD_MUTEX_INITIALIZER;

// Held across fork, so that a child never inherits it held.
static void lock_active(void) { pthread_mutex_lock(&active_lock); }
static void unlock_active(void) { pthread_mutex_unlock(&active_lock); }

static void follow_semaphore(void)
{
    pthread_mutex_lock(&active_lock);
    unsigned short now = __atomic_load_n(&baton_alloc_semaphore, __ATOMIC_RELAXED);
    if (tracking && !keep_active) {
        _Bool on = now != 0;
        jemalloc_mallctlbymib(active_mib, active_miblen, 0, 0, &on, sizeof on);
    }
    __atomic_store_n(&seen_semaphore, now, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&active_lock);
}

static inline int semaphore_moved(void)
{
    return __atomic_load_n(&baton_alloc_semaphore, __ATOMIC_RELAXED) !=
           __atomic_load_n(&seen_semaphore, __ATOMIC_RELAXED);
}

static void backtrace_hook(void **vec, unsigned *len, unsigned max)
{
    (void)vec;
    (void)max;
    *len = 0;
    sampled = 1;
}

// ---- Frees waiting for the next report ------------------------------------------------------

#define FREE_BATCH 64
static uint64_t batch[FREE_BATCH];
static uint32_t nbatch;
static pthread_mutex_t batch_lock = PTHREAD_MUTEX_INITIALIZER;

// A reported pointer freed: it joins the batch, which is reported when full.
static void report_free(void *p)
{
    pthread_mutex_lock(&batch_lock);
    batch[nbatch++] = (uintptr_t)p;
    if (nbatch == FREE_BATCH) {
        uint64_t *freed = batch;
        uint32_t n = nbatch;
        DTRACE_PROBE2(baton, frees, freed, n);
        nbatch = 0;
    }
    pthread_mutex_unlock(&batch_lock);
}

// At exit, the frees still waiting are reported, so what the process leaves unfreed is right.
__attribute__((destructor)) static void flush_frees(void)
{
    pthread_mutex_lock(&batch_lock);
    if (nbatch) {
        uint64_t *freed = batch;
        uint32_t n = nbatch;
        DTRACE_PROBE2(baton, frees, freed, n);
        nbatch = 0;
    }
    pthread_mutex_unlock(&batch_lock);
}

static void lock_batch(void) { pthread_mutex_lock(&batch_lock); }
static void unlock_batch(void) { pthread_mutex_unlock(&batch_lock); }

static uint64_t sample_mean(void)
{
    size_t lg = 0, n = sizeof lg;
    if (jemalloc_mallctlbymib(lg_sample_mib, lg_sample_miblen, &lg, &n, 0, 0) != 0 || lg > 62)
        return 0;
    return (uint64_t)1 << lg;
}

// The slow path after an allocation jemalloc sampled (or after the semaphore moved). Called,
// never tail-called, by the
// exported entry points, so a frame-pointer walk from the probe, past its first frame, starts
// at that entry point. Returns `p`, so that its caller keeps nothing across the call.
SHARED __attribute__((noinline)) void *reported_alloc(void *p)
{
    if (UNLIKELY(semaphore_moved()))
        follow_semaphore();
    if (!sampled)
        return p;
    sampled = 0;
    if (!p || !tracking || !listening())
        return p;
    if (!page_aligned(p) || !set_insert((uintptr_t)p)) {
        __atomic_fetch_add(&baton_jemalloc_dropped, 1, __ATOMIC_RELAXED);
        return p;
    }
    size_t size = next_malloc_usable_size(p);
    uint64_t mean = sample_mean();
    pthread_mutex_lock(&batch_lock);
    uint64_t *freed = batch;
    uint32_t n = nbatch;
    DTRACE_PROBE5(baton, alloc, p, size, mean, freed, n);
    nbatch = 0;
    pthread_mutex_unlock(&batch_lock);
    return p;
}

// Keeps `p` live in a register past the call, so the call before it is not a tail call.
#define NO_TAIL(p) __asm__ volatile("" : "+r"(p))

// After an allocation. jemalloc sets the flag only inside one of the entry points here, each of
// which runs this (or clears the flag), so it is never left set for a later allocation.
#define AFTER_ALLOC(p)                                                                           \
    do {                                                                                         \
        if (UNLIKELY(sampled) || UNLIKELY(semaphore_moved())) {                                  \
            p = reported_alloc(p);                                                               \
            NO_TAIL(p);                                                                          \
        }                                                                                        \
    } while (0)

// Forwards the rest of a call with a jump where the compiler can be told to (clang), so that
// forwarding costs no frame.
#if defined(__has_attribute) && __has_attribute(musttail)
#define FORWARD __attribute__((musttail)) return
#else
#define FORWARD return
#endif

// ---- Start-up -------------------------------------------------------------------------------

// 0: not started, 1: resolving, 2: done.
static int state;
static TLS unsigned char resolving;

static void *resolve(const char *name) { return dlsym(RTLD_NEXT, name); }

// Whether `a` and `b` are defined in the same object.
static int same_object(void *a, void *b)
{
    Dl_info ia, ib;
    return a && b && dladdr(a, &ia) && dladdr(b, &ib) && ia.dli_fbase == ib.dli_fbase;
}

static void start_tracking(void)
{
    if (getenv("BATON_JEMALLOC_OFF"))
        return;
    mallctl_fn mallctl = (mallctl_fn)resolve("mallctl");
    mallctlnametomib_fn nametomib = (mallctlnametomib_fn)resolve("mallctlnametomib");
    jemalloc_mallctlbymib = (mallctlbymib_fn)resolve("mallctlbymib");
    // jemalloc must be the allocator the process uses, not only present.
    if (!mallctl || !nametomib || !jemalloc_mallctlbymib || !next_malloc_usable_size ||
        !same_object((void *)mallctl, (void *)next_malloc) ||
        !same_object((void *)mallctl, (void *)next_free))
        return;
    _Bool prof = 0;
    size_t n = sizeof prof;
    if (mallctl("opt.prof", &prof, &n, 0, 0) != 0 || !prof)
        return;
    lg_sample_miblen = active_miblen = 2;
    if (nametomib("prof.lg_sample", lg_sample_mib, &lg_sample_miblen) != 0 ||
        nametomib("prof.active", active_mib, &active_miblen) != 0)
        return;
    keep_active = getenv("BATON_JEMALLOC_KEEP_ACTIVE") != 0;
    size_t nb = DEFAULT_BUCKETS;
    const char *v = getenv("BATON_JEMALLOC_BUCKETS");
    if (v && *v) {
        unsigned long want = strtoul(v, 0, 10);
        if (want >= 64 && (want & (want - 1)) == 0)
            nb = want;
    }
    void *m = mmap(0, nb * sizeof(struct bucket), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return;
    buckets = m;
    bucket_mask = nb - 1;
    void (*hook)(void **, unsigned *, unsigned) = backtrace_hook;
    if (mallctl("experimental.hooks.prof_backtrace", 0, 0, &hook, sizeof hook) != 0) {
        munmap(m, nb * sizeof(struct bucket));
        buckets = 0;
        return;
    }
    __atomic_store_n(&tracking, 1, __ATOMIC_RELEASE);
    baton_jemalloc_active = 1;
    pthread_atfork(lock_active, unlock_active, unlock_active);
    pthread_atfork(lock_batch, unlock_batch, unlock_batch);
    follow_semaphore();
}

static void init(void)
{
    int expect = 0;
    if (__atomic_compare_exchange_n(&state, &expect, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        resolving = 1;
#define RESOLVE(name, type) next_##name = (type)resolve(#name);
        ALL_NEXT(RESOLVE)
        start_tracking();
        resolving = 0;
        __atomic_store_n(&state, 2, __ATOMIC_RELEASE);
        return;
    }
    // Another thread resolves: wait for it (this thread's own recursion is served from `boot`).
    while (__atomic_load_n(&state, __ATOMIC_ACQUIRE) != 2)
        sched_yield();
}

__attribute__((constructor)) static void construct(void)
{
    if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) != 2 && !resolving)
        init();
}

// Makes `*slot` (the next definition of `name`) usable on the slow path of READY: resolves
// everything on first use, and `name` again where nothing defined it then (a C++ runtime loaded
// later). Returns 0 while this thread is itself resolving (the caller serves from `boot`).
__attribute__((noinline)) static int ready_slow(void **slot, const char *name)
{
    if (resolving)
        return 0;
    if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) != 2)
        init();
    if (!__atomic_load_n(slot, __ATOMIC_ACQUIRE))
        __atomic_store_n(slot, resolve(name), __ATOMIC_RELEASE);
    return *slot != 0;
}

#define READY(name) (LIKELY(next_##name != 0) || ready_slow((void **)&next_##name, #name))

// ---- The entry points -----------------------------------------------------------------------

// Each allocation entry point: the fast path forwards, then reads the flag; the first calls,
// before the next definition is known, go through its unready half (which may serve from
// `boot`; jemalloc reports nothing then, since the hook is installed last).
#define ALLOC_SLOW(name, params, args, unready)                                                  \
    SHARED __attribute__((noinline)) void *unready_##name params                                 \
    {                                                                                            \
        if (!READY(name))                                                                        \
            return unready;                                                                      \
        void *p = next_##name args;                                                              \
        sampled = 0;                                                                             \
        return p;                                                                                \
    }
#define ALLOC_ENTRY(name, params, args, unready)                                                 \
    ALLOC_SLOW(name, params, args, unready)                                                      \
    EXPORT void *name params                                                                     \
    {                                                                                            \
        if (UNLIKELY(!next_##name))                                                              \
            FORWARD unready_##name args;                                                         \
        void *p = next_##name args;                                                              \
        AFTER_ALLOC(p);                                                                          \
        return p;                                                                                \
    }

static void *boot_calloc(size_t count, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(count, size, &n))
        return 0;
    return boot_alloc(n, 0); // static memory, never handed out twice: already zero
}

#if defined(__x86_64__)
// malloc, the hottest entry, in assembly: the compiler keeps a frame and a saved register
// around the call, where only the sampled path needs a frame (the one the probe's stack walk
// reads); it is made there, before calling reported_alloc.
ALLOC_SLOW(malloc, (size_t n), (n), boot_alloc(n, 0))
__asm__(".text\n"
        ".globl malloc\n"
        ".type malloc, @function\n"
        ".p2align 4\n"
        "malloc:\n"
        "  .cfi_startproc\n"
        "  mov next_malloc(%rip), %rax\n"
        "  test %rax, %rax\n"
        "  jz unready_malloc\n"
        "  sub $8, %rsp\n"
        "  .cfi_adjust_cfa_offset 8\n"
        "  call *%rax\n"
        "  add $8, %rsp\n"
        "  .cfi_adjust_cfa_offset -8\n"
        "  mov sampled@gottpoff(%rip), %rcx\n"
        "  cmpb $0, %fs:(%rcx)\n"
        "  jne 1f\n"
        "  movzwl baton_alloc_semaphore(%rip), %ecx\n"
        "  cmpw seen_semaphore(%rip), %cx\n"
        "  jne 1f\n"
        "  ret\n"
        "1:\n"
        "  push %rbp\n"
        "  .cfi_adjust_cfa_offset 8\n"
        "  .cfi_offset %rbp, -16\n"
        "  mov %rsp, %rbp\n"
        "  .cfi_def_cfa_register %rbp\n"
        "  mov %rax, %rdi\n"
        "  call reported_alloc\n"
        "  pop %rbp\n"
        "  .cfi_def_cfa %rsp, 8\n"
        "  ret\n"
        "  .cfi_endproc\n"
        ".size malloc, .-malloc\n");
#else
ALLOC_ENTRY(malloc, (size_t n), (n), boot_alloc(n, 0))
#endif
ALLOC_ENTRY(calloc, (size_t count, size_t size), (count, size), boot_calloc(count, size))
ALLOC_ENTRY(aligned_alloc, (size_t align, size_t n), (align, n), boot_alloc(n, align))
ALLOC_ENTRY(memalign, (size_t align, size_t n), (align, n), boot_alloc(n, align))
ALLOC_ENTRY(valloc, (size_t n), (n), boot_alloc(n, PAGE))


// The slow path of a free of a marked pointer (a `boot` block, or maybe a sample): says whether
// to forward it. A sample is reported before it is given back, so the report comes before any
// reuse of the address.
__attribute__((noinline)) static int marked_free(void *p)
{
    if (in_boot(p))
        return 0;
    if (set_take((uintptr_t)p))
        report_free(p);
    return 1;
}

// Each free-like entry point is a leaf in its fast path, ending in a jump to the next
// definition; anything else (a marked pointer, an unresolved definition) is handled by its slow
// half, also jumped to.
#define FREE_SLOW(name, params, args)                                                            \
    SHARED __attribute__((noinline)) void slow_##name params                                     \
    {                                                                                            \
        if (marked(p) && !marked_free(p))                                                        \
            return;                                                                              \
        if (READY(name))                                                                         \
            next_##name args;                                                                    \
    }
#define FREE_ENTRY(name, params, args)                                                           \
    FREE_SLOW(name, params, args)                                                                \
    EXPORT void name params                                                                      \
    {                                                                                            \
        if (UNLIKELY(marked(p)) || UNLIKELY(!next_##name))                                       \
            FORWARD slow_##name args;                                                            \
        FORWARD next_##name args;                                                                \
    }

#if defined(__x86_64__)
// free in assembly: a leaf that jumps on, without the frame the compiler would make.
FREE_SLOW(free, (void *p), (p))
__asm__(".text\n"
        ".globl free\n"
        ".type free, @function\n"
        ".p2align 4\n"
        "free:\n"
        "  .cfi_startproc\n"
        "  mov %rdi, %rax\n"
        "  shr $12, %rax\n"
        "  and $0x3fffff, %eax\n" // MARK_BITS
        "  lea marks(%rip), %rcx\n"
        "  cmpb $0, (%rcx,%rax)\n"
        "  jne slow_free\n"
        "  mov next_free(%rip), %rax\n"
        "  test %rax, %rax\n"
        "  jz slow_free\n"
        "  jmp *%rax\n"
        "  .cfi_endproc\n"
        ".size free, .-free\n");
#else
FREE_ENTRY(free, (void *p), (p))
#endif

// A reported pointer handed to realloc is reported freed first (realloc frees it, or ends its
// sample even in place); if realloc fails it is still allocated, and reported again.
EXPORT void *realloc(void *old, size_t n)
{
    if (UNLIKELY(!READY(realloc)) || (UNLIKELY(marked(old)) && in_boot(old))) {
        void *p = malloc(n);
        if (p && old) {
            size_t room = (size_t)(boot + BOOT_SIZE - (unsigned char *)old);
            memcpy(p, old, n < room ? n : room);
        }
        return p;
    }
    int was = 0;
    if (UNLIKELY(marked(old))) {
        was = set_take((uintptr_t)old);
        if (was)
            report_free(old);
    }
    void *p = next_realloc(old, n);
    if (UNLIKELY(was) && !p && n != 0) {
        sampled = 1; // still allocated: report it again
        reported_alloc(old);
        return p;
    }
    AFTER_ALLOC(p);
    return p;
}

EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (UNLIKELY(!READY(posix_memalign))) {
        void *p = boot_alloc(n, align);
        if (!p)
            return ENOMEM;
        *out = p;
        return 0;
    }
    int r = next_posix_memalign(out, align, n);
    if (UNLIKELY(sampled)) {
        reported_alloc(r == 0 ? *out : 0);
        NO_TAIL(r);
    }
    return r;
}



EXPORT size_t malloc_usable_size(void *p)
{
    if (UNLIKELY(marked(p)) && in_boot(p))
        return PAGE;
    if (UNLIKELY(!READY(malloc_usable_size)))
        return 0;
    FORWARD next_malloc_usable_size(p);
}

// ---- jemalloc's own API ---------------------------------------------------------------------

ALLOC_ENTRY(mallocx, (size_t n, int flags), (n, flags), 0)

EXPORT void *rallocx(void *old, size_t n, int flags)
{
    if (UNLIKELY(!READY(rallocx)))
        return 0;
    int was = 0;
    if (UNLIKELY(marked(old))) {
        was = set_take((uintptr_t)old);
        if (was)
            report_free(old);
    }
    void *p = next_rallocx(old, n, flags);
    if (UNLIKELY(was) && !p) {
        sampled = 1;
        reported_alloc(old);
        return p;
    }
    AFTER_ALLOC(p);
    return p;
}

// Resizing in place: when the size changes, the old sample ends, and a new one may start.
EXPORT size_t xallocx(void *p, size_t n, size_t extra, int flags)
{
    if (UNLIKELY(!READY(xallocx)))
        return 0;
    size_t before = tracking && next_sallocx ? next_sallocx(p, 0) : 0;
    size_t after = next_xallocx(p, n, extra, flags);
    if (UNLIKELY(tracking) && after != before) {
        if (marked(p) && set_take((uintptr_t)p))
            report_free(p);
        AFTER_ALLOC(p);
    }
    sampled = 0;
    return after;
}

EXPORT size_t sallocx(const void *p, int flags)
{
    if (UNLIKELY(!READY(sallocx)))
        return 0;
    FORWARD next_sallocx(p, flags);
}

FREE_ENTRY(dallocx, (void *p, int flags), (p, flags))
FREE_ENTRY(sdallocx, (void *p, size_t n, int flags), (p, n, flags))

// ---- C++ operators (jemalloc defines them; so may the C++ runtime) --------------------------

ALLOC_ENTRY(_Znwm, (size_t n), (n), (abort(), (void *)0))
ALLOC_ENTRY(_Znam, (size_t n), (n), (abort(), (void *)0))
ALLOC_ENTRY(_ZnwmRKSt9nothrow_t, (size_t n, const void *nt), (n, nt), (abort(), (void *)0))
ALLOC_ENTRY(_ZnamRKSt9nothrow_t, (size_t n, const void *nt), (n, nt), (abort(), (void *)0))
ALLOC_ENTRY(_ZnwmSt11align_val_t, (size_t n, size_t al), (n, al), (abort(), (void *)0))
ALLOC_ENTRY(_ZnamSt11align_val_t, (size_t n, size_t al), (n, al), (abort(), (void *)0))
ALLOC_ENTRY(_ZnwmSt11align_val_tRKSt9nothrow_t, (size_t n, size_t al, const void *nt), (n, al, nt), (abort(), (void *)0))
ALLOC_ENTRY(_ZnamSt11align_val_tRKSt9nothrow_t, (size_t n, size_t al, const void *nt), (n, al, nt), (abort(), (void *)0))

#define DELETE_ENTRY FREE_ENTRY
DELETE_ENTRY(_ZdlPv, (void *p), (p))
DELETE_ENTRY(_ZdaPv, (void *p), (p))
DELETE_ENTRY(_ZdlPvRKSt9nothrow_t, (void *p, const void *nt), (p, nt))
DELETE_ENTRY(_ZdaPvRKSt9nothrow_t, (void *p, const void *nt), (p, nt))
DELETE_ENTRY(_ZdlPvSt11align_val_t, (void *p, size_t al), (p, al))
DELETE_ENTRY(_ZdaPvSt11align_val_t, (void *p, size_t al), (p, al))
DELETE_ENTRY(_ZdlPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt), (p, al, nt))
DELETE_ENTRY(_ZdaPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt), (p, al, nt))
DELETE_ENTRY(_ZdlPvm, (void *p, size_t n), (p, n))
DELETE_ENTRY(_ZdaPvm, (void *p, size_t n), (p, n))
DELETE_ENTRY(_ZdlPvmSt11align_val_t, (void *p, size_t n, size_t al), (p, n, al))
DELETE_ENTRY(_ZdaPvmSt11align_val_t, (void *p, size_t n, size_t al), (p, n, al))
