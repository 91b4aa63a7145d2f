//! Bounds on untrusted input: how many bytes a compressed body may expand to, and how many
//! elements a pprof profile may hold, checked before anything is allocated for them.
//!
//! A gzip body is inflated through a reader that stops one byte past the cap, so a
//! decompression bomb costs at most the cap in memory. A protobuf body is scanned once, without
//! allocating, and its elements counted (samples, locations, functions, strings, and the ids and
//! values the samples list), so a small message that would decode into a huge tree is refused
//! before it is decoded.

use std::io::Read;

/// The caps. Past any of them an input is refused with [`LimitError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes a body may have once decompressed (or as sent, when it is not compressed).
    pub max_bytes: u64,
    /// Samples in one profile.
    pub max_samples: u64,
    /// Locations, functions and mappings, each.
    pub max_locations: u64,
    /// Strings in the string table.
    pub max_strings: u64,
    /// Location ids, values and labels listed by all the samples together.
    pub max_sample_entries: u64,
}

impl Default for Limits {
    /// Generous for an agent's batch (a window of a host's samples is a few MB at most), and
    /// small enough that the worst body a server accepts decodes into tens of MB.
    fn default() -> Limits {
        Limits {
            max_bytes: 32 << 20,
            max_samples: 500_000,
            max_locations: 1_000_000,
            max_strings: 1_000_000,
            max_sample_entries: 4_000_000,
        }
    }
}

/// Why an input was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// Past a cap: the input may be well formed, but it is too big (HTTP 413).
    #[error("{what} is over the limit of {limit} ({flag})")]
    TooLarge {
        what: String,
        limit: u64,
        flag: &'static str,
    },
    /// Not readable: bad gzip, or protobuf that ends in the middle of a field (HTTP 400).
    #[error("{0}")]
    Malformed(String),
}

/// `bytes` decompressed when it is gzip, else as is; at most `max_bytes` either way.
pub fn inflate(bytes: &[u8], max_bytes: u64) -> Result<std::borrow::Cow<'_, [u8]>, LimitError> {
    let too_large = |what: &str| LimitError::TooLarge {
        what: what.to_string(),
        limit: max_bytes,
        flag: "--max-body-bytes",
    };
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        if bytes.len() as u64 > max_bytes {
            return Err(too_large("the body"));
        }
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(max_bytes + 1)
        .read_to_end(&mut out)
        .map_err(|e| LimitError::Malformed(format!("bad gzip stream: {e}")))?;
    if out.len() as u64 > max_bytes {
        return Err(too_large("the decompressed body"));
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Copies `reader` (gzip-decompressed when `gzip`) into `out`, at most `max_bytes`: for uploads
/// that go to disk rather than memory. The output must start with `magic`, checked before
/// anything is written. Returns the bytes written.
pub fn inflate_to(
    reader: impl Read,
    gzip: bool,
    out: &mut impl std::io::Write,
    max_bytes: u64,
    magic: &[u8],
) -> Result<u64, LimitError> {
    let mut src: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let bad = |e: std::io::Error| LimitError::Malformed(format!("bad gzip stream: {e}"));
    let mut head = vec![0u8; magic.len()];
    src.read_exact(&mut head).map_err(bad)?;
    if head != magic {
        return Err(LimitError::Malformed(format!(
            "the upload does not start with {}",
            String::from_utf8_lossy(magic).escape_debug()
        )));
    }
    out.write_all(&head).map_err(bad)?;
    let rest = max_bytes.saturating_sub(head.len() as u64);
    let n = head.len() as u64 + std::io::copy(&mut (&mut src).take(rest + 1), out).map_err(bad)?;
    if n > max_bytes {
        return Err(LimitError::TooLarge {
            what: "the decompressed upload".into(),
            limit: max_bytes,
            flag: "--max-debuginfo-bytes",
        });
    }
    Ok(n)
}

/// Elements counted in a pprof profile's protobuf, without decoding it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub samples: u64,
    pub locations: u64,
    pub functions: u64,
    pub mappings: u64,
    pub strings: u64,
    pub sample_entries: u64,
}

/// Reads a varint at `*at`, moving past it.
fn varint(b: &[u8], at: &mut usize) -> Result<u64, LimitError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b
            .get(*at)
            .ok_or_else(|| LimitError::Malformed("protobuf ends inside a varint".into()))?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(LimitError::Malformed(
        "a varint longer than 10 bytes".into(),
    ))
}

/// Walks the fields of one message, calling `f(field number, wire type, payload)` for each
/// (the payload of a length-delimited field; empty for the others).
fn fields(
    b: &[u8],
    mut f: impl FnMut(u64, u64, &[u8]) -> Result<(), LimitError>,
) -> Result<(), LimitError> {
    let mut at = 0;
    let short = || LimitError::Malformed("protobuf ends inside a field".into());
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(b, &mut at)?;
                f(field, wire, &[])?;
            }
            1 | 5 => {
                at += if wire == 1 { 8 } else { 4 };
                if at > b.len() {
                    return Err(short());
                }
                f(field, wire, &[])?;
            }
            2 => {
                let len = varint(b, &mut at)?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| at.checked_add(l))
                    .filter(|&e| e <= b.len())
                    .ok_or_else(short)?;
                f(field, wire, &b[at..end])?;
                at = end;
            }
            _ => {
                return Err(LimitError::Malformed(format!(
                    "protobuf wire type {wire} (field {field}) is not one pprof uses"
                )))
            }
        }
    }
    Ok(())
}

/// Counts a pprof `Profile` message's elements, and checks them against `limits`.
pub fn check_pprof(b: &[u8], limits: &Limits) -> Result<Counts, LimitError> {
    let mut c = Counts::default();
    fields(b, |field, wire, payload| {
        match field {
            2 => {
                c.samples += 1;
                // Sample: 1 location_id, 2 value (packed or not), 3 label.
                fields(payload, |_, w, p| {
                    c.sample_entries += if w == 2 {
                        // A packed run: one varint per byte without its high bit; a label is
                        // one entry.
                        p.iter().filter(|&&x| x & 0x80 == 0).count().max(1) as u64
                    } else {
                        1
                    };
                    Ok(())
                })?;
            }
            3 => c.mappings += 1,
            4 => c.locations += 1,
            5 => c.functions += 1,
            6 if wire == 2 => c.strings += 1,
            _ => {}
        }
        Ok(())
    })?;
    let over = |what: &str, n: u64, limit: u64, flag: &'static str| {
        (n > limit).then(|| LimitError::TooLarge {
            what: format!("{what} ({n})"),
            limit,
            flag,
        })
    };
    let checks = [
        over(
            "the samples",
            c.samples,
            limits.max_samples,
            "--max-samples",
        ),
        over(
            "the locations",
            c.locations,
            limits.max_locations,
            "--max-locations",
        ),
        over(
            "the functions",
            c.functions,
            limits.max_locations,
            "--max-locations",
        ),
        over(
            "the mappings",
            c.mappings,
            limits.max_locations,
            "--max-locations",
        ),
        over(
            "the strings",
            c.strings,
            limits.max_strings,
            "--max-strings",
        ),
        over(
            "the samples' location ids, values and labels",
            c.sample_entries,
            limits.max_sample_entries,
            "--max-sample-entries",
        ),
    ];
    match checks.into_iter().flatten().next() {
        Some(e) => Err(e),
        None => Ok(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20, "64 MiB of zeros compress well");
        let err = inflate(&bomb, 1 << 20).unwrap_err();
        assert!(
            matches!(err, LimitError::TooLarge { limit, .. } if limit == 1 << 20),
            "{err}"
        );
        assert_eq!(inflate(&gzip(b"abc"), 3).expect("fits").as_ref(), b"abc");
        assert!(matches!(
            inflate(b"\x1f\x8bxx", 10),
            Err(LimitError::Malformed(_))
        ));
        assert!(matches!(
            inflate(&[1u8; 11], 10),
            Err(LimitError::TooLarge { .. })
        ));
        let mut sink = Vec::new();
        assert!(matches!(
            inflate_to(&bomb[..], true, &mut sink, 1000, b"\x7fELF"),
            Err(LimitError::Malformed(_))
        ));
        assert!(
            sink.is_empty(),
            "nothing is written before the magic is seen"
        );
        let mut elf_bomb = b"\x7fELF".to_vec();
        elf_bomb.resize(1 << 20, 0);
        assert!(matches!(
            inflate_to(&gzip(&elf_bomb)[..], true, &mut sink, 1000, b"\x7fELF"),
            Err(LimitError::TooLarge { .. })
        ));
        assert_eq!(sink.len(), 1001, "it stopped one byte past the cap");
    }

    #[test]
    fn pprof_elements_are_counted_before_decoding() {
        // Three samples (one with a packed run of four location ids, the last of them two bytes
        // long), two strings.
        let mut b2 = vec![0x12, 0x00, 0x12, 0x00, 0x32, 0x00, 0x32, 0x01, b'x'];
        b2.extend([0x12, 0x07, 0x0a, 0x05, 1, 2, 3, 0x81, 0x01]);
        let c = check_pprof(&b2, &Limits::default()).expect("counts");
        assert_eq!(c.samples, 3);
        assert_eq!(c.strings, 2);
        assert_eq!(c.sample_entries, 4);
        let tight = Limits {
            max_samples: 2,
            ..Limits::default()
        };
        let err = check_pprof(&b2, &tight).unwrap_err();
        assert!(err.to_string().contains("--max-samples"), "{err}");
        // Truncated: a length past the end.
        assert!(matches!(
            check_pprof(&b2[..b2.len() - 2], &Limits::default()),
            Err(LimitError::Malformed(_))
        ));
    }
}
