/* Baton thread context: the writer side. See baton_threadctx.h for the API and
 * docs/labels.md (Layout) for the layout.
 *
 * Per thread: a record (OpenTelemetry's thread-local context record), allocated the first time
 * the thread sets something and freed when it exits, and the initial-exec thread-local pointer
 * `otel_thread_ctx_v1` that points at it. The library's TLS is that pointer and a flag, so it
 * fits the static TLS a loader keeps for libraries opened later. The record is rewritten in
 * place with `valid` cleared, so a reader that interrupts the thread mid-update sees no record
 * rather than a torn one.
 *
 * Per process: a two-page header in a memfd named `baton-threadctx` (Baton finds it in
 * /proc/PID/maps): magic, version, the number of keys, the pointer's offset from the thread
 * pointer, flags, a generation, then the keys, 32 bytes each. Mapped privately, so a forked
 * child's new keys never show in its parent. */
#define _GNU_SOURCE
#include "baton_threadctx.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define RECORD_BYTES 640
#define HEAD_BYTES 28
#define ATTRS_BYTES (RECORD_BYTES - HEAD_BYTES)
#define MAX_KEYS 255
#define KEY_BYTES 32
#define PAGE_BYTES (32 + MAX_KEYS * KEY_BYTES)
#define FLAG_OFFSET_VARIES 1u

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

struct record {
    unsigned char trace_id[16];
    unsigned char span_id[8];
    unsigned char valid;
    unsigned char flags;
    uint16_t attrs_size;
    unsigned char attrs[ATTRS_BYTES];
} __attribute__((packed, aligned(8)));
_Static_assert(sizeof(struct record) == RECORD_BYTES, "the record is 640 bytes");

struct header {
    char magic[8];
    uint32_t version;
    uint32_t key_count;
    int64_t tls_offset;
    uint32_t flags;
    uint32_t generation;
    char keys[MAX_KEYS][KEY_BYTES];
};
_Static_assert(sizeof(struct header) == PAGE_BYTES, "the header is two pages");

/* The pointer readers look for. Initial-exec: at a fixed offset from the thread pointer, the
 * same in every thread, which the header publishes. */
__attribute__((visibility("default"), tls_model("initial-exec")))
__thread struct record *otel_thread_ctx_v1;

static __thread int offset_checked __attribute__((tls_model("initial-exec")));

static struct header *header;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;

/* At thread exit: detach the record, then free it. */
static void release(void *r)
{
    otel_thread_ctx_v1 = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    free(r);
}

static void make_exit_key(void)
{
    pthread_key_create(&exit_key, release);
}

#define barrier() __atomic_signal_fence(__ATOMIC_SEQ_CST)

static char *thread_pointer(void)
{
    char *tp;
#if defined(__x86_64__)
    __asm__ volatile("mov %%fs:0, %0" : "=r"(tp));
#elif defined(__aarch64__)
    __asm__ volatile("mrs %0, tpidr_el0" : "=r"(tp));
#else
#error "baton_threadctx supports x86-64 and arm64"
#endif
    return tp;
}

static int64_t pointer_offset(void)
{
    return (int64_t)((char *)&otel_thread_ctx_v1 - thread_pointer());
}

/* Maps the header; called with `lock` held. */
static struct header *map_header(void)
{
    if (header)
        return header;
    void *page = MAP_FAILED;
    int fd = memfd_create("baton-threadctx", MFD_CLOEXEC);
    if (fd >= 0) {
        if (ftruncate(fd, PAGE_BYTES) == 0)
            page = mmap(0, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        close(fd);
    }
    if (page == MAP_FAILED) {
        page = mmap(0, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            return 0;
        prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)page, PAGE_BYTES,
              (unsigned long)"baton-threadctx");
    }
    struct header *h = page;
    h->version = 1;
    h->tls_offset = pointer_offset();
    barrier();
    memcpy(h->magic, "BATONCTX", 8);
    header = h;
    return h;
}

int baton_ctx_key(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= KEY_BYTES)
        return -1;
    pthread_mutex_lock(&lock);
    struct header *h = map_header();
    int idx = -1;
    if (h) {
        for (uint32_t i = 0; i < h->key_count; i++) {
            if (strncmp(h->keys[i], name, KEY_BYTES) == 0) {
                idx = (int)i;
                break;
            }
        }
        if (idx < 0 && h->key_count < MAX_KEYS) {
            idx = (int)h->key_count;
            memcpy(h->keys[idx], name, n + 1);
            __atomic_store_n(&h->key_count, h->key_count + 1, __ATOMIC_RELEASE);
            __atomic_store_n(&h->generation, h->generation + 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&lock);
    return idx;
}

/* The calling thread's record, allocated and attached to its pointer the first time; NULL when
 * no memory is left. */
static struct record *record(void)
{
    struct record *r = otel_thread_ctx_v1;
    if (r)
        return r;
    if (!offset_checked) {
        offset_checked = 1;
        pthread_mutex_lock(&lock);
        struct header *h = map_header();
        if (h && h->tls_offset != pointer_offset())
            __atomic_fetch_or(&h->flags, FLAG_OFFSET_VARIES, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&lock);
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        return 0;
    pthread_once(&key_once, make_exit_key);
    pthread_setspecific(exit_key, r);
    barrier();
    otel_thread_ctx_v1 = r;
    barrier();
    return r;
}

/* Removes key `key`'s entry from the attributes; returns the new size. */
static uint16_t remove_entry(struct record *r, unsigned key)
{
    uint16_t at = 0, size = r->attrs_size;
    while (at + 2 <= size) {
        uint16_t len = 2 + r->attrs[at + 1];
        if (r->attrs[at] == key) {
            memmove(r->attrs + at, r->attrs + at + len, size - at - len);
            size -= len;
            continue;
        }
        at += len;
    }
    return size;
}

int baton_ctx_set_n(int key, const char *value, size_t len)
{
    if (key < 0 || key >= MAX_KEYS || !header || (uint32_t)key >= header->key_count)
        return -1;
    if (len > 255)
        len = 255;
    struct record *r = record();
    if (!r)
        return -1;
    r->valid = 0;
    barrier();
    uint16_t size = remove_entry(r, (unsigned)key);
    int rc = -1;
    if (size + 2 + len <= ATTRS_BYTES) {
        r->attrs[size] = (unsigned char)key;
        r->attrs[size + 1] = (unsigned char)len;
        memcpy(r->attrs + size + 2, value, len);
        size += 2 + len;
        rc = 0;
    }
    r->attrs_size = size;
    barrier();
    r->valid = 1;
    return rc;
}

int baton_ctx_set(int key, const char *value)
{
    return baton_ctx_set_n(key, value, value ? strlen(value) : 0);
}

void baton_ctx_unset(int key)
{
    if (key < 0 || key >= MAX_KEYS)
        return;
    struct record *r = otel_thread_ctx_v1;
    if (!r)
        return;
    r->valid = 0;
    barrier();
    r->attrs_size = remove_entry(r, (unsigned)key);
    barrier();
    r->valid = 1;
}

void baton_ctx_set_trace(const unsigned char trace_id[16], const unsigned char span_id[8],
                         unsigned char flags)
{
    pthread_mutex_lock(&lock);
    map_header();
    pthread_mutex_unlock(&lock);
    struct record *r = record();
    if (!r)
        return;
    r->valid = 0;
    barrier();
    memcpy(r->trace_id, trace_id, 16);
    memcpy(r->span_id, span_id, 8);
    r->flags = flags;
    barrier();
    r->valid = 1;
}

void baton_ctx_clear(void)
{
    struct record *r = otel_thread_ctx_v1;
    if (!r)
        return;
    r->valid = 0;
    barrier();
    memset(r->trace_id, 0, sizeof(r->trace_id) + sizeof(r->span_id));
    r->flags = 0;
    r->attrs_size = 0;
}
