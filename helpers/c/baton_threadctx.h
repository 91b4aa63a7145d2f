/* Baton thread context: labels a thread publishes about the work it is doing (the request's
 * endpoint, its trace and span IDs), which Baton reads at every sample and event and stores
 * with them. Setting a label is a few stores into memory of the calling thread: no system
 * call, no lock.
 *
 * Build the library once and link it, or load it (Python's helper does):
 *
 *     cc -O2 -fPIC -shared baton_threadctx.c -o libbaton_threadctx.so
 *
 * or compile baton_threadctx.c into your program. Then:
 *
 *     int endpoint = baton_ctx_key("endpoint");   // once per process
 *     baton_ctx_set(endpoint, "/checkout");       // on this thread, from now on
 *     ...
 *     baton_ctx_clear();                          // the request is done
 *
 * The per-thread record is OpenTelemetry's thread-local context record, pointed to by the
 * thread-local `otel_thread_ctx_v1`; docs/labels.md (Layout) describes the layout and where it
 * departs from the OpenTelemetry proposal. Every function is safe to call from any thread;
 * each changes only the calling thread's labels. */
#ifndef BATON_THREADCTX_H
#define BATON_THREADCTX_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The index of label `name` in this process (at most 31 bytes of lower-case letters, digits
 * and '_' are kept as given; Baton stores others with '_' in their place), registering it the
 * first time. Returns -1 when 255 keys are registered already, or `name` is empty or too long. */
int baton_ctx_key(const char *name);

/* Sets label `key` of the calling thread to the NUL-terminated `value` (at most 255 bytes are
 * kept; Baton keeps 128). Returns 0, or -1 when the key is unknown or the thread's record
 * (640 bytes) is full. */
int baton_ctx_set(int key, const char *value);

/* As baton_ctx_set, with a length instead of a NUL. */
int baton_ctx_set_n(int key, const char *value, size_t len);

/* Removes label `key` from the calling thread. */
void baton_ctx_unset(int key);

/* Sets the calling thread's trace and span IDs (W3C trace context: 16 and 8 bytes) and
 * trace flags. All-zero IDs mean no trace. */
void baton_ctx_set_trace(const unsigned char trace_id[16], const unsigned char span_id[8],
                         unsigned char flags);

/* Removes every label and the trace of the calling thread. */
void baton_ctx_clear(void);

#ifdef __cplusplus
}
#endif

#endif
