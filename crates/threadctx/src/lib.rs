//! Thread context for Rust programs: labels a thread publishes about the work it is doing
//! (`endpoint=/checkout`, a trace and span ID), which Baton reads at every sample and event of
//! the thread and stores with them.
//!
//! ```no_run
//! let endpoint = baton_threadctx::key("endpoint").expect("a key");
//! let _labels = baton_threadctx::set_scoped(endpoint, "/checkout");
//! // samples taken on this thread now carry endpoint=/checkout, until `_labels` drops
//! ```
//!
//! The per-thread record is OpenTelemetry's thread-local context record; the process header
//! (a memfd named `baton-threadctx`) tells Baton where each thread's pointer to it is. The same
//! layout as Baton's C helper (`helpers/c`), written in Rust: stable Rust cannot export the
//! thread-local symbol `otel_thread_ctx_v1` that other OpenTelemetry readers look for, so only
//! readers of the header (Baton) find it. Setting a label is a few stores into the thread's own
//! memory: no system call, no lock. x86-64 and arm64 Linux.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::Mutex;

const RECORD_BYTES: usize = 640;
const HEAD_BYTES: usize = 28;
const ATTRS_BYTES: usize = RECORD_BYTES - HEAD_BYTES;
/// Keys a process can register.
pub const MAX_KEYS: usize = 255;
const KEY_BYTES: usize = 32;
const PAGE_BYTES: usize = 32 + MAX_KEYS * KEY_BYTES;
const FLAG_OFFSET_VARIES: u32 = 1;

/// OpenTelemetry's thread-local context record.
#[repr(C, packed)]
struct Record {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    valid: u8,
    flags: u8,
    attrs_size: u16,
    attrs: [u8; ATTRS_BYTES],
}
const _: () = assert!(std::mem::size_of::<Record>() == RECORD_BYTES);

/// The process header Baton finds by its mapping's name.
#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    key_count: u32,
    tls_offset: i64,
    flags: u32,
    generation: u32,
    keys: [[u8; KEY_BYTES]; MAX_KEYS],
}
const _: () = assert!(std::mem::size_of::<Header>() == PAGE_BYTES);

thread_local! {
    /// The pointer Baton reads: const-initialised and without a destructor, so it is plain
    /// ELF TLS at a fixed offset from the thread pointer.
    static POINTER: Cell<*mut Record> = const { Cell::new(std::ptr::null_mut()) };
    /// Owns the thread's record and detaches it when the thread exits.
    static OWNER: RefCell<Option<Owned>> = const { RefCell::new(None) };
}

struct Owned {
    _record: Box<Record>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = POINTER.try_with(|p| p.set(std::ptr::null_mut()));
        compiler_fence(Ordering::SeqCst);
    }
}

/// The header's address, once mapped.
static HEADER: Mutex<usize> = Mutex::new(0);

fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads the thread pointer register; no memory is touched.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags))
    };
    tp
}

fn pointer_offset() -> i64 {
    let addr = POINTER.with(|p| p as *const Cell<*mut Record> as usize);
    addr as i64 - thread_pointer() as i64
}

/// Maps the header (once); its address, or 0 when no memory could be had.
fn header() -> *mut Header {
    let mut h = HEADER.lock().unwrap_or_else(|e| e.into_inner());
    if *h != 0 {
        return *h as *mut Header;
    }
    // SAFETY: plain system calls on a new descriptor and a new mapping, each result checked.
    let page = unsafe {
        let fd = libc::memfd_create(c"baton-threadctx".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return std::ptr::null_mut();
        }
        let p = if libc::ftruncate(fd, PAGE_BYTES as libc::off_t) == 0 {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            )
        } else {
            libc::MAP_FAILED
        };
        libc::close(fd);
        p
    };
    if page == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let hdr = page as *mut Header;
    // SAFETY: `hdr` is a fresh, zeroed, writable mapping of the header's size.
    unsafe {
        (*hdr).version = 1;
        (*hdr).tls_offset = pointer_offset();
        compiler_fence(Ordering::SeqCst);
        (*hdr).magic = *b"BATONCTX";
    }
    *h = hdr as usize;
    hdr
}

/// A label's key in this process, registered the first time: at most 31 bytes, 255 keys.
pub fn key(name: &str) -> Option<u8> {
    if name.is_empty() || name.len() >= KEY_BYTES {
        return None;
    }
    let h = header();
    if h.is_null() {
        return None;
    }
    let _guard = HEADER.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: `h` is the mapped header; keys are written under the lock.
    unsafe {
        let count = (*h).key_count as usize;
        for i in 0..count {
            let k = &(*h).keys[i];
            let end = k.iter().position(|&b| b == 0).unwrap_or(KEY_BYTES);
            if &k[..end] == name.as_bytes() {
                return Some(i as u8);
            }
        }
        if count >= MAX_KEYS {
            return None;
        }
        let slot = &mut (*h).keys[count];
        slot[..name.len()].copy_from_slice(name.as_bytes());
        compiler_fence(Ordering::SeqCst);
        (*h).key_count = count as u32 + 1;
        (*h).generation += 1;
        Some(count as u8)
    }
}

/// The calling thread's record, made and attached the first time.
fn record() -> *mut Record {
    let p = POINTER.with(Cell::get);
    if !p.is_null() {
        return p;
    }
    let h = header();
    if !h.is_null() {
        let _guard = HEADER.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the mapped header; flags are written under the lock.
        unsafe {
            if (*h).tls_offset != pointer_offset() {
                (*h).flags |= FLAG_OFFSET_VARIES;
            }
        }
    }
    let mut owned = Box::new(Record {
        trace_id: [0; 16],
        span_id: [0; 8],
        valid: 0,
        flags: 0,
        attrs_size: 0,
        attrs: [0; ATTRS_BYTES],
    });
    let p: *mut Record = &mut *owned;
    OWNER.with(|o| *o.borrow_mut() = Some(Owned { _record: owned }));
    compiler_fence(Ordering::SeqCst);
    POINTER.with(|c| c.set(p));
    compiler_fence(Ordering::SeqCst);
    p
}

/// Runs `f` on the thread's record with `valid` cleared, so a sample taken meanwhile sees no
/// record rather than half of one.
fn update(f: impl FnOnce(&mut Record)) {
    let r = record();
    // SAFETY: the record belongs to this thread and lives until it exits; only this thread
    // writes it, and readers only interrupt it.
    unsafe {
        std::ptr::write_volatile(&raw mut (*r).valid, 0);
        compiler_fence(Ordering::SeqCst);
        f(&mut *r);
        compiler_fence(Ordering::SeqCst);
        std::ptr::write_volatile(&raw mut (*r).valid, 1);
    }
}

/// Removes `key`'s entry; returns the attributes' new size.
fn remove(r: &mut Record, key: u8) -> usize {
    let mut size = r.attrs_size as usize;
    let mut at = 0;
    while at + 2 <= size {
        let len = 2 + r.attrs[at + 1] as usize;
        if r.attrs[at] == key {
            r.attrs.copy_within(at + len..size, at);
            size -= len;
        } else {
            at += len;
        }
    }
    size
}

/// Sets label `key` of the calling thread to `value` (at most 255 bytes kept). Returns false
/// when the thread's labels are full (640 bytes in all).
pub fn set(key: u8, value: &str) -> bool {
    let v = &value.as_bytes()[..value.len().min(255)];
    let mut ok = false;
    update(|r| {
        let size = remove(r, key);
        if size + 2 + v.len() <= ATTRS_BYTES {
            r.attrs[size] = key;
            r.attrs[size + 1] = v.len() as u8;
            r.attrs[size + 2..size + 2 + v.len()].copy_from_slice(v);
            r.attrs_size = (size + 2 + v.len()) as u16;
            ok = true;
        } else {
            r.attrs_size = size as u16;
        }
    });
    ok
}

/// Removes label `key` from the calling thread.
pub fn unset(key: u8) {
    update(|r| r.attrs_size = remove(r, key) as u16);
}

/// Sets the calling thread's trace and span IDs (W3C: 16 and 8 bytes) and trace flags;
/// all-zero IDs mean no trace.
pub fn set_trace(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) {
    update(|r| {
        r.trace_id = trace_id;
        r.span_id = span_id;
        r.flags = flags;
    });
}

/// Removes every label and the trace of the calling thread.
pub fn clear() {
    let p = POINTER.with(Cell::get);
    if p.is_null() {
        return;
    }
    // SAFETY: the thread's own record, as in `update`.
    unsafe {
        std::ptr::write_volatile(&raw mut (*p).valid, 0);
        compiler_fence(Ordering::SeqCst);
        (*p).trace_id = [0; 16];
        (*p).span_id = [0; 8];
        (*p).flags = 0;
        (*p).attrs_size = 0;
    }
}

/// A label set until the guard drops.
#[must_use = "the label is removed when the guard drops"]
pub struct Scoped(u8);

impl Drop for Scoped {
    fn drop(&mut self) {
        unset(self.0);
    }
}

/// Sets label `key` to `value` until the returned guard drops.
pub fn set_scoped(key: u8, value: &str) -> Scoped {
    set(key, value);
    Scoped(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header's address as /proc/self/maps names it.
    fn mapped_header() -> Option<usize> {
        std::fs::read_to_string("/proc/self/maps")
            .ok()?
            .lines()
            .find_map(|l| {
                l.contains("/memfd:baton-threadctx")
                    .then(|| usize::from_str_radix(l.split('-').next()?, 16).ok())?
            })
    }

    #[test]
    fn a_reader_finds_the_record_where_the_header_says() {
        let k = key("endpoint").expect("key");
        assert_eq!(key("endpoint"), Some(k));
        let other = key("user").expect("key");
        assert!(set(k, "/checkout"));
        assert!(set(other, "ada"));
        assert!(set(k, "/cart"));
        set_trace([7; 16], [9; 8], 1);
        let addr = mapped_header().expect("the header is mapped");
        // SAFETY: reading this process's own header and record, as Baton reads them.
        unsafe {
            let h = &*(addr as *const Header);
            assert_eq!(&h.magic, b"BATONCTX");
            assert!(h.key_count >= 2);
            let slot = (thread_pointer() as i64 + h.tls_offset) as *const *const Record;
            let r = &**slot;
            assert_eq!(r.valid, 1);
            assert_eq!(r.trace_id, [7; 16]);
            let size = r.attrs_size as usize;
            // `user` first, then the later value of `endpoint`: the last occurrence wins.
            let mut want = vec![other, 3];
            want.extend_from_slice(b"ada");
            want.extend_from_slice(&[k, 5]);
            want.extend_from_slice(b"/cart");
            assert_eq!(&r.attrs[..size], &want[..]);
        }
        {
            let _g = set_scoped(other, "bob");
        }
        clear();
        // SAFETY: as above.
        unsafe {
            let h = &*(addr as *const Header);
            let slot = (thread_pointer() as i64 + h.tls_offset) as *const *const Record;
            let size = { (**slot).attrs_size };
            assert_eq!(size, 0);
        }
    }

    #[test]
    fn every_thread_finds_its_pointer_at_the_same_offset() {
        let here = pointer_offset();
        let there = std::thread::spawn(pointer_offset).join().expect("thread");
        assert_eq!(here, there);
    }
}
