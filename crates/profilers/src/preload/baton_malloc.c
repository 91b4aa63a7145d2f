// SPDX-License-Identifier: Apache-2.0
// Baton's allocation sampler for glibc malloc: a library preloaded into a process
// (LD_PRELOAD=libbaton_malloc.so) that samples its allocations by bytes, in the process, and
// tells Baton only of sampled allocations and of frees of sampled pointers, through two USDT
// probes:
//
//   baton:alloc(ptr, size, mean, freed, nfreed)
//                          a sampled allocation; `mean` is the sampling mean in bytes (0: every
//                          allocation is reported); `freed` points to `nfreed` (at most 64)
//                          addresses of sampled allocations freed since the last report
//   baton:frees(freed, n)  a full batch of 64 such frees, when no sample came to carry them
//   baton:free(ptr)        one free, in exact mode (every free is reported)
//
// Frees of sampled allocations wait in a batch until the next sample or until the batch is
// full, so a sample costs one trap; live counts can lag by at most 63 sampled allocations.
//
// Sampling is a Poisson process over allocated bytes, as in tcmalloc and Go's runtime: each
// thread counts down an exponentially distributed number of bytes with mean `mean`; the
// allocation that takes the count below zero is sampled. An allocation of s bytes is thus sampled
// with probability 1 - exp(-s/mean), whatever came before it, and Baton weighs it by the inverse.
//
// The fast path of an unsampled allocation is a subtraction from a thread-local counter and a
// jump to glibc's own `__libc_malloc`; nothing traps. The probes have USDT semaphores: while no
// Baton is attached, the sampler does not sample at all (a sample only redraws the count).
//
// Sampled allocations are served from a region of address space reserved at the first sample,
// one page span each, so `free` knows a sampled pointer by one range check and never looks a
// pointer up. The spans are recycled; large ones give their pages back on free. With a mean of 0
// (exact mode) every allocation is reported, served by glibc, and every free is reported too:
// Baton ignores frees of pointers it never saw.
//
// The environment sets the mean: BATON_MALLOC_SAMPLE_BYTES (default 2 MiB, as tcmalloc). Nothing here
// allocates through malloc, and a failure (no address space for the region) only stops sampling:
// the program runs on.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define _SDT_HAS_SEMAPHORES 1
#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TLS __thread __attribute__((tls_model("initial-exec")))

// The USDT semaphores: the kernel counts attached probes here.
EXPORT unsigned short baton_alloc_semaphore __attribute__((section(".probes")));
EXPORT unsigned short baton_free_semaphore __attribute__((section(".probes")));
EXPORT unsigned short baton_frees_semaphore __attribute__((section(".probes")));
#include <sys/sdt.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define PAGE 4096UL
#define DEFAULT_MEAN (2UL * 1024 * 1024)

// Read by Baton (its symbol) to learn the mean a process samples at; set from the environment.
EXPORT volatile uint64_t baton_malloc_sample_bytes = DEFAULT_MEAN;
// Sampled allocations not made because the region was full or could not be reserved.
EXPORT volatile uint64_t baton_malloc_dropped;

// Per thread: bytes left before the next sample (<= 0: the next allocation samples), and the
// random state the counts are drawn from (0 until the thread's first draw).
static TLS int64_t left;
static TLS uint64_t rng;

// The region of sampled allocations: [base, base + size).
static uintptr_t region_base;
static uintptr_t region_size;

static inline int listening(void)
{
    return __atomic_load_n(&baton_alloc_semaphore, __ATOMIC_RELAXED) != 0;
}

// The size is published after the base (release), and read before it (acquire).
static inline int in_region(const void *p)
{
    uintptr_t size = __atomic_load_n(&region_size, __ATOMIC_ACQUIRE);
    return (uintptr_t)p - region_base < size;
}

// ---- Drawing the byte counts ----------------------------------------------------------------

static uint64_t next_random(void)
{
    if (UNLIKELY(rng == 0)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
              ((uint64_t)syscall(SYS_gettid) << 40) ^ (uintptr_t)&rng;
        rng |= 1;
    }
    // xorshift64*
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

// An exponentially distributed count of bytes with mean `mean`.
static int64_t draw(uint64_t mean)
{
    // u in (0, 1]: 53 random bits.
    double u = ((double)(next_random() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double x = -log(u) * (double)mean;
    if (x > 9.0e18)
        x = 9.0e18;
    return (int64_t)x + 1;
}

// ---- The region -----------------------------------------------------------------------------

// Per page of the region, for the first page of a span: its size in pages and the bytes asked
// for; `next` chains free spans of the same page count.
struct span {
    uint64_t bytes;
    uint32_t pages;
    uint32_t next; // 1 + page index of the next free span, 0 for none
};

#define SMALL_CLASSES 64 // free lists for spans of 1..64 pages; bigger ones share the last list
static struct span *spans;
static uint32_t free_lists[SMALL_CLASSES + 1];
static uintptr_t bump; // next unused page index
static uintptr_t region_pages;
static int region_failed;
static pthread_mutex_t region_lock = PTHREAD_MUTEX_INITIALIZER;

static void lock_region(void) { pthread_mutex_lock(&region_lock); }
static void unlock_region(void) { pthread_mutex_unlock(&region_lock); }

// Reserves the region: as much address space as the system gives, from 64 GiB down to 1 GiB.
// Pages cost nothing until touched.
static int reserve_region(void)
{
    if (region_size)
        return 1;
    if (region_failed)
        return 0;
    for (uintptr_t gib = 64; gib >= 1; gib /= 2) {
        uintptr_t size = gib << 30;
        uintptr_t pages = size / PAGE;
        void *meta = mmap(0, pages * sizeof(struct span), PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (meta == MAP_FAILED)
            continue;
        void *base = mmap(0, size, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) {
            munmap(meta, pages * sizeof(struct span));
            continue;
        }
        spans = meta;
        region_pages = pages;
        region_base = (uintptr_t)base;
        __atomic_store_n(&region_size, size, __ATOMIC_RELEASE);
        return 1;
    }
    region_failed = 1;
    return 0;
}

static uint32_t class_of(uintptr_t pages)
{
    return pages <= SMALL_CLASSES ? (uint32_t)pages - 1 : SMALL_CLASSES;
}

// A span of `pages` pages for `bytes` bytes; 0 when the region cannot give one.
static void *span_alloc(size_t bytes, int *fresh)
{
    uintptr_t pages = (bytes + PAGE - 1) / PAGE;
    if (pages == 0)
        pages = 1;
    void *p = 0;
    lock_region();
    if (reserve_region()) {
        uint32_t c = class_of(pages);
        uint32_t *link = &free_lists[c];
        // Exact fit on a small list; first fit on the list of big spans.
        while (*link) {
            uintptr_t i = *link - 1;
            if (spans[i].pages == pages || (c == SMALL_CLASSES && spans[i].pages >= pages)) {
                *link = spans[i].next;
                spans[i].bytes = bytes;
                spans[i].next = 0;
                p = (void *)(region_base + i * PAGE);
                *fresh = 0;
                break;
            }
            link = &spans[i].next;
        }
        if (!p && bump + pages <= region_pages) {
            uintptr_t i = bump;
            bump += pages;
            spans[i] = (struct span){.bytes = bytes, .pages = (uint32_t)pages, .next = 0};
            p = (void *)(region_base + i * PAGE);
            *fresh = 1;
        }
    }
    unlock_region();
    if (!p)
        __atomic_add_fetch(&baton_malloc_dropped, 1, __ATOMIC_RELAXED);
    return p;
}

static size_t span_bytes(const void *p)
{
    return spans[((uintptr_t)p - region_base) / PAGE].bytes;
}

// Frees of sampled allocations wait here, and reach Baton in batches: with the next sample's
// probe, or by themselves once the batch is full. A sample then costs one trap, not two.
#define FREE_BATCH 64
static uint64_t pending[FREE_BATCH];
static uint32_t npending;
// The batch a thread reports, taken out of `pending` under the lock.
static TLS uint64_t reporting[FREE_BATCH];

// Takes the waiting frees into this thread's `reporting`; returns how many. Under the lock.
static uint32_t take_pending(void)
{
    uint32_t n = npending;
    memcpy(reporting, pending, n * sizeof(pending[0]));
    npending = 0;
    return n;
}

static void span_free(void *p)
{
    uintptr_t i = ((uintptr_t)p - region_base) / PAGE;
    uint32_t full = 0;
    lock_region();
    uint32_t pages = spans[i].pages;
    // Big spans give their memory back; small ones keep it for the next sample of their size.
    if (pages > 16)
        madvise(p, (size_t)pages * PAGE, MADV_DONTNEED);
    uint32_t c = class_of(pages);
    spans[i].next = free_lists[c];
    free_lists[c] = (uint32_t)(i + 1);
    pending[npending++] = (uintptr_t)p;
    if (npending == FREE_BATCH)
        full = take_pending();
    unlock_region();
    if (full) {
        uint64_t *batch = reporting;
        DTRACE_PROBE2(baton, frees, batch, full);
    }
}

// ---- Sampling -------------------------------------------------------------------------------

// The slow path of an allocation of `n` bytes whose count ran out (or of any allocation in exact
// mode): decides, serves and reports. Called, never tail-called, by the exported entry points,
// so a frame-pointer walk from the probe, past its first frame, starts at that entry point.
__attribute__((noinline)) static void *sample(size_t n, size_t align, int zero)
{
    uint64_t mean = baton_malloc_sample_bytes;
    int first = rng == 0;
    if (mean == 0) {
        left = 0;
    } else {
        // A thread's first count starts now; the allocation that got here only ran it out.
        left = draw(mean) - (first ? (int64_t)n : 0);
        if (first && left > 0)
            goto unsampled;
    }
    if (!listening())
        goto unsampled;
    void *p;
    if (mean == 0) {
        p = align ? __libc_memalign(align, n) : zero ? __libc_calloc(1, n) : __libc_malloc(n);
    } else {
        int fresh = 0;
        p = align > PAGE ? 0 : span_alloc(n, &fresh);
        if (!p)
            goto unsampled;
        if (zero && !fresh)
            memset(p, 0, n);
    }
    if (p) {
        // The frees waiting go with it (exact mode reports each free by itself).
        uint32_t nfreed = 0;
        if (mean != 0) {
            lock_region();
            nfreed = take_pending();
            unlock_region();
        }
        uint64_t *freed = reporting;
        DTRACE_PROBE5(baton, alloc, p, n, mean, freed, nfreed);
    }
    return p;
unsampled:
    return align ? __libc_memalign(align, n) : zero ? __libc_calloc(1, n) : __libc_malloc(n);
}

// Keeps `p` live in a register past the call, so the call before it is not a tail call.
#define NO_TAIL(p) __asm__ volatile("" : "+r"(p))

static inline __attribute__((always_inline)) int counts_out(size_t n)
{
    left -= (int64_t)n;
    return UNLIKELY(left <= 0);
}

// ---- The entry points -----------------------------------------------------------------------

EXPORT void *malloc(size_t n)
{
    if (LIKELY(!counts_out(n)))
        return __libc_malloc(n);
    void *p = sample(n, 0, 0);
    NO_TAIL(p);
    return p;
}

EXPORT void free(void *p)
{
    if (UNLIKELY(in_region(p))) {
        span_free(p);
        return;
    }
    if (UNLIKELY(baton_malloc_sample_bytes == 0) && p &&
        __atomic_load_n(&baton_free_semaphore, __ATOMIC_RELAXED))
        DTRACE_PROBE1(baton, free, p);
    __libc_free(p);
}

EXPORT void *calloc(size_t count, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(count, size, &n)) {
        errno = ENOMEM;
        return 0;
    }
    if (LIKELY(!counts_out(n)))
        return __libc_calloc(count, size);
    void *p = sample(n, 0, 1);
    NO_TAIL(p);
    return p;
}

// Moves a sampled allocation, or makes a sampled one of an unsampled one: a new block, the
// bytes copied, the old block freed (and reported if it was sampled).
static inline __attribute__((always_inline)) void *realloc_by_copy(void *old, size_t old_bytes, size_t n, int sampled)
{
    void *p = sampled ? sample(n, 0, 0) : __libc_malloc(n);
    if (!p)
        return 0;
    memcpy(p, old, old_bytes < n ? old_bytes : n);
    free(old);
    return p;
}

static size_t (*libc_usable_size)(void *);

static size_t usable_size(void *p)
{
    if (in_region(p))
        return span_bytes(p);
    if (!libc_usable_size)
        libc_usable_size = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    return libc_usable_size ? libc_usable_size(p) : 0;
}

EXPORT void *realloc(void *old, size_t n)
{
    if (!old)
        return malloc(n);
    if (n == 0) {
        free(old);
        return 0;
    }
    int sampled = counts_out(n);
    void *p;
    if (LIKELY(!sampled && !in_region(old) && baton_malloc_sample_bytes != 0))
        return __libc_realloc(old, n);
    // Exact mode reports the old block freed and the new one allocated.
    p = realloc_by_copy(old, usable_size(old), n, sampled || baton_malloc_sample_bytes == 0);
    NO_TAIL(p);
    return p;
}

EXPORT void *reallocarray(void *old, size_t count, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(count, size, &n)) {
        errno = ENOMEM;
        return 0;
    }
    void *p = realloc(old, n);
    NO_TAIL(p);
    return p;
}

static inline __attribute__((always_inline)) void *aligned(size_t align, size_t n)
{
    if (LIKELY(!counts_out(n)))
        return __libc_memalign(align, n);
    return sample(n, align, 0);
}

EXPORT void *memalign(size_t align, size_t n)
{
    void *p = aligned(align, n);
    NO_TAIL(p);
    return p;
}

EXPORT void *aligned_alloc(size_t align, size_t n)
{
    void *p = aligned(align, n);
    NO_TAIL(p);
    return p;
}

EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)) != 0)
        return EINVAL;
    void *p = aligned(align, n);
    NO_TAIL(p);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

EXPORT void *valloc(size_t n)
{
    void *p = aligned(PAGE, n);
    NO_TAIL(p);
    return p;
}

EXPORT void *pvalloc(size_t n)
{
    void *p = aligned(PAGE, (n + PAGE - 1) & ~(PAGE - 1));
    NO_TAIL(p);
    return p;
}

EXPORT size_t malloc_usable_size(void *p)
{
    return p ? usable_size(p) : 0;
}

// ---- Start-up and exit -------------------------------------------------------------------------------

static void before_fork(void) { lock_region(); }
static void after_fork(void) { unlock_region(); }

// At exit, the frees still waiting are reported, so what the process leaves unfreed is right.
__attribute__((destructor)) static void flush(void)
{
    if (!region_size)
        return;
    lock_region();
    uint32_t n = take_pending();
    unlock_region();
    if (n) {
        uint64_t *batch = reporting;
        DTRACE_PROBE2(baton, frees, batch, n);
    }
}

__attribute__((constructor)) static void init(void)
{
    const char *v = getenv("BATON_MALLOC_SAMPLE_BYTES");
    if (v && *v) {
        char *end = 0;
        unsigned long long n = strtoull(v, &end, 10);
        if (end && *end == 0)
            baton_malloc_sample_bytes = n;
    }
    pthread_atfork(before_fork, after_fork, after_fork);
    libc_usable_size = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
}
