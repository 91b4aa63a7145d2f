//! One definition per BPF record, and the one checked way to read them.
//!
//! Every struct that BPF C and Rust both read or write (a ring record, a map key or value) is a
//! `#[repr(C)]` struct here on the Rust side, declared next to the code that reads it, with a
//! compile-time size assertion that matches a `_Static_assert` next to the C struct. Bytes from
//! BPF become a struct only through [`decode`] (or [`decode_with_tail`] for a record that ends in
//! a large byte payload, such as a copied user stack, which stays where it lies): a record of
//! the wrong size is an error, logged and counted in [`bad_records`], which the agent exports
//! as `baton_bpf_bad_records_total`. No code reads a record at a byte offset.
//!
//! Why hand-written structs rather than the types `libbpf-cargo` generates into each skeleton:
//! the generator emits only the types the program's global variables and map definitions
//! reach, so ring records (a ring map names no type) would still be read by hand; it emits them
//! per skeleton, so a record shared through a header (`copy.h`'s `end_event`, `common.h`'s
//! `row_key`) would be a different type in every profiler and the code that reads it could not
//! be shared; and its types carry no "any bytes are a valid value" guarantee to decode with.
//! The cost of writing them down is the size assertions, which fail the build on both sides
//! when a field is added on one.

use std::sync::atomic::{AtomicU64, Ordering};

/// A plain record shared with BPF: `#[repr(C)]`, with a size assertion against its C twin.
///
/// # Safety
///
/// The type is `#[repr(C)]` (or a primitive, or an array of them) and made only of integers,
/// arrays of integers and other records, so every bit pattern is a valid value, and it has no padding (every
/// C twin spells its padding out as fields).
pub(crate) unsafe trait Record: Copy + 'static {
    /// The C struct's name, for errors.
    const NAME: &'static str;
}

// SAFETY: integers are valid for any bit pattern and have no padding.
unsafe impl Record for u32 {
    const NAME: &'static str = "__u32";
}
// SAFETY: as above.
unsafe impl Record for u64 {
    const NAME: &'static str = "__u64";
}
// SAFETY: an array of u64 is valid for any bit pattern and has no padding.
unsafe impl<const N: usize> Record for [u64; N] {
    const NAME: &'static str = "__u64[]";
}

/// Declares `$t` a [`Record`] mirroring C's `struct $c`, and asserts at compile time that it
/// has the size `$size` the C side asserts too.
///
/// The caller promises what [`Record`]'s safety section asks: `$t` is `#[repr(C)]`, made of
/// integers, arrays of integers and other records only, with its padding spelled out as fields.
macro_rules! record {
    ($t:ty, $c:literal, $size:expr) => {
        const _: () = assert!(
            std::mem::size_of::<$t>() == $size,
            concat!(
                "struct ",
                $c,
                " changed size: change its C twin and its assertion too"
            )
        );
        // SAFETY: the caller of `record!` declares a repr(C) struct of integers without
        // implicit padding (see `Record`).
        unsafe impl crate::mechanics::record::Record for $t {
            const NAME: &'static str = $c;
        }
    };
}
pub(crate) use record;

/// A record that did not have its struct's size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BPF record {record}: {got} bytes, expected {want}")]
pub struct RecordError {
    pub record: &'static str,
    pub got: usize,
    pub want: usize,
}

static BAD_RECORDS: AtomicU64 = AtomicU64::new(0);

/// Records from BPF dropped because their size was wrong, since the process started.
pub fn bad_records() -> u64 {
    BAD_RECORDS.load(Ordering::Relaxed)
}

fn bad<T: Record>(got: usize, want: usize) -> RecordError {
    BAD_RECORDS.fetch_add(1, Ordering::Relaxed);
    let e = RecordError {
        record: T::NAME,
        got,
        want,
    };
    tracing::debug!(error = %e, "dropped a BPF record");
    e
}

/// The record `T` that `bytes` hold, which must be exactly its size.
pub(crate) fn decode<T: Record>(bytes: &[u8]) -> Result<T, RecordError> {
    let want = std::mem::size_of::<T>();
    if bytes.len() != want {
        return Err(bad::<T>(bytes.len(), want));
    }
    // SAFETY: `bytes` holds exactly size_of::<T>() bytes; `T: Record` is valid for any bit
    // pattern; `read_unaligned` needs no alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The record `T` at the start of `bytes`, and the `tail` bytes that follow it: `bytes` must be
/// exactly that long. For records that end in a large payload, read in place.
pub(crate) fn decode_with_tail<T: Record>(
    bytes: &[u8],
    tail: usize,
) -> Result<(T, &[u8]), RecordError> {
    let head = std::mem::size_of::<T>();
    if bytes.len() != head + tail {
        return Err(bad::<T>(bytes.len(), head + tail));
    }
    let (h, t) = bytes.split_at(head);
    Ok((decode(h)?, t))
}

/// The `kind` a tagged record starts with (a `__u32`), for rings that carry several records.
pub(crate) fn kind_of(bytes: &[u8]) -> Option<u32> {
    bytes.get(..4).and_then(|b| decode::<u32>(b).ok())
}

/// The bytes of a record, to write into a map.
pub(crate) fn bytes_of<T: Record>(record: &T) -> &[u8] {
    // SAFETY: `T: Record` has no padding, so all size_of::<T>() bytes are initialised.
    unsafe {
        std::slice::from_raw_parts((record as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// A NUL-terminated `char comm[16]` as text.
pub(crate) fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The addresses of a stack buffer, up to the first zero.
pub(crate) fn addresses(raw: &[u64]) -> Vec<u64> {
    raw.iter().copied().take_while(|&a| a != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Pair {
        a: u32,
        b: u32,
    }
    // SAFETY: repr(C), two u32, no padding.
    unsafe impl Record for Pair {
        const NAME: &'static str = "pair";
    }

    #[test]
    fn a_record_of_the_wrong_size_is_an_error_and_counted() {
        let before = bad_records();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&7u32.to_ne_bytes());
        bytes.extend_from_slice(&9u32.to_ne_bytes());
        let p: Pair = decode(&bytes).expect("exact size");
        assert_eq!((p.a, p.b), (7, 9));
        let e = decode::<Pair>(&bytes[..6]).err().expect("short");
        assert_eq!((e.record, e.got, e.want), ("pair", 6, 8));
        bytes.push(0);
        assert!(
            decode::<Pair>(&bytes).is_err(),
            "a long record is an error too"
        );
        assert!(bad_records() - before >= 2);
        let (p, tail) = decode_with_tail::<Pair>(&bytes, 1).expect("head and tail");
        assert_eq!((p.a, tail), (7, &[0u8][..]));
        assert_eq!(bytes_of(&p), &bytes[..8]);
        assert_eq!(kind_of(&bytes), Some(7));
    }

    #[test]
    fn comm_stops_at_the_nul() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(b"bash");
        assert_eq!(comm(&raw), "bash");
        assert_eq!(comm(&[b'x'; 16]), "x".repeat(16));
    }
}
