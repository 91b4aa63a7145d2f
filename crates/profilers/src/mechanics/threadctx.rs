//! Thread context: the labels a process publishes for each of its threads (`bpf/threadctx.h`),
//! found per process from the helpers' process header and decoded once per interned record.
//!
//! A process that links one of Baton's helpers (`helpers/`) maps a two-page header named
//! `baton-threadctx` (a memfd, or an anonymous mapping named with `PR_SET_VMA`): magic
//! `BATONCTX`, version 1, the number of keys, the offset of the thread-local record pointer
//! from the thread pointer, flags, a generation bumped on each key added, then 255 keys of 32
//! bytes. The per-thread record is OpenTelemetry's thread-local context record.
//!
//! Labels are untrusted: a value that is not UTF-8 is dropped, a long one is cut, and a key's
//! distinct values stop at a cap; each is counted, and nothing a process writes reaches another
//! process's labels (records are interned with their pid).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use libbpf_rs::{MapCore, MapFlags};

use crate::interp::mem::ProcMem;
use crate::mechanics::maps::percpu_sum;
use crate::mechanics::record::{bytes_of, decode, record};

/// The name of the helpers' process header mapping.
pub const MAPPING_NAME: &str = "baton-threadctx";
const MAGIC: &[u8; 8] = b"BATONCTX";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;
const KEY_BYTES: usize = 32;
/// Keys a process can publish (a record's key index is a byte; 255 is never used).
pub const MAX_KEYS: usize = 255;
const PAGE_BYTES: usize = HEADER_BYTES + MAX_KEYS * KEY_BYTES;
/// The longest value kept; longer ones are cut at a character boundary.
pub const MAX_VALUE_BYTES: usize = 128;
/// Distinct values kept per key; later new values are dropped.
pub const DEFAULT_VALUES_PER_KEY: usize = 1000;
/// Header flag: a thread found its pointer at another offset from its thread pointer than the
/// header gives (the variable is in dynamic TLS); BPF would read the wrong memory.
const FLAG_OFFSET_VARIES: u32 = 1;

/// `struct ctx_proc` of threadctx.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct CtxProc {
    pub tls_offset: i64,
    pub cookie: u64,
}
record!(CtxProc, "ctx_proc", 16);

/// `struct ctx_record` of threadctx.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct CtxRecord {
    pub pid: u32,
    pub attrs_read: u16,
    pub pad: u16,
    pub cookie: u64,
    pub head: [u8; 28],
    pub attrs: [u8; 220],
}
record!(CtxRecord, "ctx_record", 264);

/// Counters of the thread-context reads, cumulative.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ContextStats {
    /// Contexts read by BPF (each sample or event that carried one).
    pub read: u64,
    /// Reads that failed: the pointer or the record was not readable.
    pub failed: u64,
    /// Processes found publishing thread context.
    pub processes: u64,
    /// Values cut to [`MAX_VALUE_BYTES`].
    pub cut: u64,
    /// Labels dropped: a value not UTF-8, an unknown key, a malformed entry.
    pub invalid: u64,
    /// Labels dropped because their key had reached its cap of distinct values.
    pub over_cap: u64,
    /// Rows whose context was no longer in BPF's table at drain time (their labels are lost).
    pub missing: u64,
    /// Processes not read: their helper found its thread pointer offset varies by thread.
    pub offset_varies: u64,
}

impl ContextStats {
    /// Labels left out or changed, for summaries.
    pub fn dropped(&self) -> u64 {
        self.cut + self.invalid + self.over_cap + self.missing
    }
}

/// What a process published: where its header is, and its keys as last read.
struct Published {
    header: u64,
    start_time: u64,
    /// This process's number, which BPF copies into its records.
    cookie: u64,
    generation: u32,
    keys: Vec<Option<String>>,
}

/// The header page as read from a process.
struct Header {
    tls_offset: i64,
    flags: u32,
    generation: u32,
    keys: Vec<Option<String>>,
}

/// Labels of one interned context, shared by every row that has it.
pub type ContextLabels = Arc<[(String, String)]>;

/// One profiler's view of thread context: which processes publish it (mirrored in BPF's
/// `ctx_procs`), their keys, and the labels of each context seen.
pub struct ThreadContexts {
    procs: HashMap<u32, Published>,
    /// Processes replaced under their pid (or gone) whose rows may still be drained: kept
    /// until the end of the drain after.
    retired: Vec<(u32, Published)>,
    next_cookie: u64,
    decoded: HashMap<u64, ContextLabels>,
    values: HashMap<String, HashSet<String>>,
    values_per_key: usize,
    stats: ContextStats,
    /// (pid, start time) of processes not read because their offset varies.
    refused: HashSet<(u32, u64)>,
}

impl Default for ThreadContexts {
    fn default() -> Self {
        ThreadContexts::new(DEFAULT_VALUES_PER_KEY)
    }
}

impl ThreadContexts {
    pub fn new(values_per_key: usize) -> ThreadContexts {
        ThreadContexts {
            procs: HashMap::new(),
            retired: Vec::new(),
            next_cookie: 1,
            decoded: HashMap::new(),
            values: HashMap::new(),
            values_per_key,
            stats: ContextStats::default(),
            refused: HashSet::new(),
        }
    }

    /// Looks for a published header in a process's `/proc/PID/maps` text, and tells BPF where
    /// its threads' records are. A process that stopped publishing (it exec'ed) is forgotten.
    pub(crate) fn observe(&mut self, pid: u32, maps: &str, procs: &(impl MapCore + ?Sized)) {
        let Some(addr) = header_address(maps) else {
            // An exiting process's maps are empty: it is forgotten by `prune`, after its last
            // rows are decoded. One that exec'd into a program without the header is forgotten
            // now.
            if !maps.is_empty() {
                if let Some(old) = self.procs.remove(&pid) {
                    let _ = procs.delete(&pid.to_ne_bytes());
                    self.retired.push((pid, old));
                }
            }
            return;
        };
        let start_time = start_time(pid);
        if let Some(p) = self.procs.get_mut(&pid) {
            if p.header == addr && p.start_time == start_time {
                // Known: read its keys again only when it added some (keys must be read
                // while it lives; its rows may be drained after it exits).
                if generation_of(pid, addr).is_some_and(|g| g != p.generation) {
                    if let Some(h) = read_header(pid, addr) {
                        p.generation = h.generation;
                        p.keys = h.keys;
                    }
                }
                return;
            }
        }
        let Some(h) = read_header(pid, addr) else {
            return;
        };
        if h.flags & FLAG_OFFSET_VARIES != 0 {
            // Another thread's pointer is elsewhere: reading at the header's offset could
            // decode any of its memory as labels.
            if self.refused.insert((pid, start_time)) {
                self.stats.offset_varies += 1;
            }
            let _ = procs.delete(&pid.to_ne_bytes());
            if let Some(old) = self.procs.remove(&pid) {
                self.retired.push((pid, old));
            }
            return;
        }
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let value = CtxProc {
            tls_offset: h.tls_offset,
            cookie,
        };
        if procs
            .update(&pid.to_ne_bytes(), bytes_of(&value), MapFlags::ANY)
            .is_ok()
        {
            self.stats.processes += 1;
            let replaced = self.procs.insert(
                pid,
                Published {
                    header: addr,
                    start_time,
                    cookie,
                    generation: h.generation,
                    keys: h.keys,
                },
            );
            // The process this pid named before: its rows may still be drained.
            if let Some(old) = replaced {
                self.retired.push((pid, old));
            }
        }
    }

    /// Forgets processes that ended (or whose pid now names another process), so BPF never
    /// reads a new process at an old one's offset. Call it at the end of each drain: the
    /// drained rows of a process that just exited are decoded with its keys first.
    pub(crate) fn prune(&mut self, procs: &(impl MapCore + ?Sized)) {
        // Those retired before this drain have had their rows decoded.
        self.retired.clear();
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(pid, p)| start_time(**pid) != p.start_time)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some(old) = self.procs.remove(&pid) {
                let _ = procs.delete(&pid.to_ne_bytes());
                // Rows still in BPF's other buffer are decoded at the next drain.
                self.retired.push((pid, old));
            }
        }
        // Interned records are looked up again each window: BPF's table is an LRU.
        self.decoded.clear();
        // The cap is per window: one busy window never starves the next.
        self.values.clear();
        self.refused.retain(|(pid, t)| start_time(*pid) == *t);
    }

    /// The labels of context `id` (0: none), read from BPF's `ctx_records`.
    pub(crate) fn labels(
        &mut self,
        id: u64,
        records: &(impl MapCore + ?Sized),
    ) -> Option<ContextLabels> {
        if id == 0 {
            return None;
        }
        if let Some(l) = self.decoded.get(&id) {
            return Some(l.clone());
        }
        let Some(raw) = records
            .lookup(&id.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
        else {
            self.stats.missing += 1;
            return None;
        };
        let r = decode::<CtxRecord>(&raw).ok()?;
        let labels: ContextLabels = self.decode(&r).into();
        self.decoded.insert(id, labels.clone());
        Some(labels)
    }

    /// Adds BPF's counters to the ones kept here.
    pub(crate) fn stats(&self, ctx_stats: &(impl MapCore + ?Sized)) -> ContextStats {
        ContextStats {
            read: percpu_sum(ctx_stats, 0),
            failed: percpu_sum(ctx_stats, 2),
            ..self.stats
        }
    }

    fn decode(&mut self, r: &CtxRecord) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let trace = &r.head[..16];
        let span = &r.head[16..24];
        if trace.iter().any(|&b| b != 0) {
            out.push(("trace_id".into(), hex(trace)));
            out.push(("span_id".into(), hex(span)));
        }
        let size = u16::from_ne_bytes([r.head[26], r.head[27]]) as usize;
        let read = (r.attrs_read as usize).min(r.attrs.len());
        if size > read {
            // The record was longer than BPF reads: what did not fit is left out.
            self.stats.cut += 1;
        }
        let attrs = &r.attrs[..read];
        let mut i = 0;
        let mut entries: Vec<(u8, &[u8])> = Vec::new();
        while i + 2 <= attrs.len() {
            let (key, len) = (attrs[i], attrs[i + 1] as usize);
            if i + 2 + len > attrs.len() {
                self.stats.invalid += 1;
                break;
            }
            entries.push((key, &attrs[i + 2..i + 2 + len]));
            i += 2 + len;
        }
        // The last occurrence of a key wins.
        let mut seen = HashSet::new();
        for (key, value) in entries.into_iter().rev() {
            if !seen.insert(key) {
                continue;
            }
            let Some(name) = self.key_name(r.pid, r.cookie, key) else {
                self.stats.invalid += 1;
                continue;
            };
            let Ok(value) = std::str::from_utf8(value) else {
                self.stats.invalid += 1;
                continue;
            };
            let value = if value.len() > MAX_VALUE_BYTES {
                self.stats.cut += 1;
                let mut end = MAX_VALUE_BYTES;
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                &value[..end]
            } else {
                value
            };
            if value.chars().any(|c| c.is_control()) {
                self.stats.invalid += 1;
                continue;
            }
            let known = self.values.entry(name.clone()).or_default();
            if !known.contains(value) {
                if known.len() >= self.values_per_key {
                    self.stats.over_cap += 1;
                    continue;
                }
                known.insert(value.to_string());
            }
            out.push((name, value.to_string()));
        }
        out.sort();
        out
    }

    /// A key index's label name in the process `pid` and `cookie` name, re-reading its header
    /// once when the index is past what was read (keys are only ever appended).
    fn key_name(&mut self, pid: u32, cookie: u64, key: u8) -> Option<String> {
        let live = self.procs.get_mut(&pid).filter(|p| p.cookie == cookie);
        let p = match live {
            Some(p) => p,
            None => self
                .retired
                .iter_mut()
                .find(|(rp, p)| *rp == pid && p.cookie == cookie)
                .map(|(_, p)| p)?,
        };
        if p.keys.get(key as usize).is_none_or(|k| k.is_none()) {
            let h = read_header(pid, p.header)?;
            if h.generation != p.generation {
                p.generation = h.generation;
                p.keys = h.keys;
            }
        }
        p.keys.get(key as usize).cloned().flatten()
    }
}

/// Where the helpers' header is mapped in a process, from its maps text.
fn header_address(maps: &str) -> Option<u64> {
    maps.lines().find_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        let named =
            path == format!("/memfd:{MAPPING_NAME}") || path == format!("[anon:{MAPPING_NAME}]");
        if !named {
            return None;
        }
        let start = line.split('-').next()?;
        u64::from_str_radix(start, 16).ok()
    })
}

/// When a process started (field 22 of its stat, in clock ticks); 0 when it is gone.
fn start_time(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command may hold spaces and parentheses: fields count from the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The generation of a process's header: what changes when it adds keys.
fn generation_of(pid: u32, addr: u64) -> Option<u32> {
    ProcMem::new(pid).read_u32(addr + 28).ok()
}

/// Reads and checks a process's header page.
fn read_header(pid: u32, addr: u64) -> Option<Header> {
    let mem = ProcMem::new(pid);
    let mut page = vec![0u8; PAGE_BYTES];
    mem.read(addr, &mut page).ok()?;
    parse_header(&page)
}

fn parse_header(page: &[u8]) -> Option<Header> {
    if page.len() < PAGE_BYTES || &page[..8] != MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(page[o..o + 4].try_into().unwrap_or_default());
    if u32_at(8) != VERSION {
        return None;
    }
    let count = (u32_at(12) as usize).min(MAX_KEYS);
    let tls_offset = i64::from_ne_bytes(page[16..24].try_into().ok()?);
    let flags = u32_at(24);
    let generation = u32_at(28);
    let keys = (0..count)
        .map(|i| {
            let raw = &page[HEADER_BYTES + i * KEY_BYTES..HEADER_BYTES + (i + 1) * KEY_BYTES];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            label_name(std::str::from_utf8(&raw[..end]).ok()?)
        })
        .collect();
    Some(Header {
        tls_offset,
        flags,
        generation,
        keys,
    })
}

/// A published key as a label name: lower case, `.` `-` and spaces as `_`; a name Baton fills
/// itself gets a `ctx_` prefix; `None` for a name that has nothing left.
pub fn label_name(key: &str) -> Option<String> {
    let mut name: String = key
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '_') {
        return None;
    }
    if name.starts_with(|c: char| c.is_ascii_digit())
        || baton_model::registry::BATON_LABELS.contains(&name.as_str())
    {
        name = format!("ctx_{name}");
    }
    Some(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str]) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_BYTES];
        p[..8].copy_from_slice(MAGIC);
        p[8..12].copy_from_slice(&VERSION.to_ne_bytes());
        p[12..16].copy_from_slice(&(keys.len() as u32).to_ne_bytes());
        p[16..24].copy_from_slice(&(-64i64).to_ne_bytes());
        for (i, k) in keys.iter().enumerate() {
            let o = HEADER_BYTES + i * KEY_BYTES;
            p[o..o + k.len()].copy_from_slice(k.as_bytes());
        }
        p
    }

    fn contexts(keys: &[&str], cap: usize) -> ThreadContexts {
        let mut c = ThreadContexts::new(cap);
        let h = parse_header(&page(keys)).unwrap();
        c.procs.insert(
            7,
            Published {
                header: 0,
                start_time: 1,
                cookie: 1,
                generation: h.generation,
                keys: h.keys,
            },
        );
        c
    }

    fn record(trace: u8, attrs: &[u8], size: Option<u16>) -> CtxRecord {
        let mut r = CtxRecord {
            pid: 7,
            attrs_read: attrs.len() as u16,
            pad: 0,
            cookie: 1,
            head: [0; 28],
            attrs: [0; 220],
        };
        r.head[..16].fill(trace);
        r.head[16..24].fill(trace);
        r.head[24] = 1;
        r.head[26..28].copy_from_slice(&size.unwrap_or(attrs.len() as u16).to_ne_bytes());
        r.attrs[..attrs.len()].copy_from_slice(attrs);
        r
    }

    #[test]
    fn header_keys_become_label_names() {
        let h = parse_header(&page(&["endpoint", "http.route", "pid", "9lives", "..."])).unwrap();
        assert_eq!(h.tls_offset, -64);
        let names: Vec<_> = h.keys.into_iter().collect();
        assert_eq!(
            names,
            vec![
                Some("endpoint".to_string()),
                Some("http_route".to_string()),
                Some("ctx_pid".to_string()),
                Some("ctx_9lives".to_string()),
                None
            ]
        );
        let mut bad = page(&[]);
        bad[0] = b'X';
        assert!(parse_header(&bad).is_none());
    }

    #[test]
    fn records_decode_with_the_last_value_of_a_key_winning() {
        let mut c = contexts(&["endpoint", "user"], 10);
        let attrs = [&[0u8, 2][..], b"/a", &[1, 3], b"bob", &[0, 2], b"/b"].concat();
        let out = c.decode(&record(0xab, &attrs, None));
        assert_eq!(
            out,
            vec![
                ("endpoint".into(), "/b".into()),
                ("span_id".into(), "ab".repeat(8)),
                ("trace_id".into(), "ab".repeat(16)),
                ("user".into(), "bob".into()),
            ]
        );
    }

    #[test]
    fn bad_values_are_dropped_or_cut_and_counted() {
        let mut c = contexts(&["endpoint", "blob", "raw"], 2);
        let long = vec![b'x'; 200];
        let attrs = [
            &[0u8, 2][..],
            b"/a",
            &[1, 200],
            &long,
            &[2, 2],
            &[0xff, 0xfe], // not UTF-8
            &[9, 1],
            b"z", // no such key
        ]
        .concat();
        let out = c.decode(&record(0, &attrs[..], None));
        assert_eq!(out[0], ("blob".into(), "x".repeat(MAX_VALUE_BYTES)));
        assert_eq!(out[1], ("endpoint".into(), "/a".into()));
        assert_eq!(out.len(), 2);
        assert_eq!((c.stats.cut, c.stats.invalid), (1, 2));
        // A truncated entry ends the attributes; a record longer than was read is counted.
        let out = c.decode(&record(0, &[0, 9, b'/'], Some(400)));
        assert!(out.is_empty());
        assert_eq!((c.stats.cut, c.stats.invalid), (2, 3));
        // The cap: two values per key here.
        for v in ["/b", "/c", "/a"] {
            let attrs = [&[0u8, 2][..], v.as_bytes()].concat();
            c.decode(&record(0, &attrs, None));
        }
        assert_eq!(c.stats.over_cap, 1);
    }

    #[test]
    fn the_header_mapping_is_found_by_name() {
        let maps = "7f00-7f02 rw-s 00000000 00:01 12 /memfd:baton-threadctx (deleted)\n";
        assert_eq!(header_address(maps), Some(0x7f00));
        let maps = "7e00-7e02 rw-p 00000000 00:00 0 [anon:baton-threadctx]\n";
        assert_eq!(header_address(maps), Some(0x7e00));
        assert_eq!(header_address("7e00-7e02 rw-p 0 00:00 0 [heap]\n"), None);
    }
}
