//! The dictionary both backends share: frame and stack ids, symbol keys, the ids a store holds
//! already (so each frame, stack and symbol is written once), and the columns a row's labels
//! fill.

use std::collections::{HashMap, HashSet};

use baton_model::batch::{fnv1a, Span};
use baton_model::{Batch, Frame, FrameKind, Labels};

/// Every label of a row that has no column of its own (a profiler's `state=sleeping`, an ad-hoc
/// script's keys, an ingest's extra labels), as `k=v;k=v` in name order. A `;` in a value
/// becomes `,`, so the list splits back.
pub(crate) fn detail(labels: &baton_model::Labels) -> Option<String> {
    let parts: Vec<String> = labels
        .iter()
        .filter(|(k, _)| crate::query::is_detail_label(k))
        .map(|(k, v)| format!("{k}={}", v.replace(';', ",")))
        .collect();
    (!parts.is_empty()).then(|| parts.join(";"))
}

/// The key of a user frame's symbol: its build ID, or its path when the ELF has none.
pub(crate) fn symbol_key(f: &Frame) -> String {
    match &f.build_id {
        Some(b) => b.clone(),
        None => format!("path:{}", f.module),
    }
}

/// A frame's id: a hash of what tells it apart.
pub(crate) fn frame_id(f: &Frame) -> u64 {
    // Inlined frames share their caller's address: their function tells them apart. An
    // interpreted frame has no address: it is its function, file and line.
    let inlined = match f.kind {
        FrameKind::Inlined | FrameKind::Interpreted => f.function.as_deref().unwrap_or(""),
        _ => "",
    };
    let kind = [f.kind.as_u8()];
    let address = f.address.to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![
        &kind,
        f.module.as_bytes(),
        f.build_id.as_deref().unwrap_or("").as_bytes(),
        &address,
        inlined.as_bytes(),
    ];
    let line = f.line.unwrap_or(0).to_le_bytes();
    if f.kind == FrameKind::Interpreted {
        parts.push(f.file.as_deref().unwrap_or("").as_bytes());
        parts.push(&line);
    }
    fnv1a(&parts)
}

/// A stack's id: a hash of its frame ids, leaf first.
pub(crate) fn stack_id(frame_ids: &[u64]) -> u64 {
    let bytes: Vec<u8> = frame_ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    fnv1a(&[&bytes])
}

/// A map keyed by frame or stack id (FNV hashes already): the caches of both backends, looked
/// up once per frame of every stack a query returns, so SipHash showed in profiles.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildIdHash>;

/// Hashes a `u64` that is already a hash (frame ids are FNV-1a), by one multiply.
#[derive(Clone, Copy, Default)]
pub(crate) struct BuildIdHash;

pub(crate) struct IdHash(u64);

impl std::hash::BuildHasher for BuildIdHash {
    type Hasher = IdHash;
    fn build_hasher(&self) -> IdHash {
        IdHash(0)
    }
}

impl std::hash::Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The frames, stacks, symbols and batches a store holds, known at open and kept as it writes.
#[derive(Default)]
pub(crate) struct Dictionary {
    pub frames: HashSet<u64>,
    pub stacks: HashSet<u64>,
    pub symbols: HashSet<(String, u64)>,
    /// User frames whose symbol row exists, so the write path checks a u64, not a string key.
    pub symbolized: HashSet<u64>,
    /// Ids of the batches stored through `Store::write_batch_once`.
    pub batches: HashSet<String>,
}

/// What a write adds to the dictionary, in the order first seen. It joins the [`Dictionary`]
/// (through [`Dictionary::commit`]) only once the write succeeded, so a failed write leaves
/// nothing taken as stored.
#[derive(Default)]
pub(crate) struct NewEntries<'a> {
    pub frames: Vec<(u64, &'a Frame)>,
    /// A user frame's symbol: (symbol key, file offset) and the frame that has it.
    pub symbols: Vec<((String, u64), &'a Frame)>,
    /// Stack id and its frame ids, leaf first.
    pub stacks: Vec<(u64, Vec<u64>)>,
    frame_ids: HashSet<u64>,
    stack_ids: HashSet<u64>,
    symbol_keys: HashSet<(String, u64)>,
    symbolized: HashSet<u64>,
}

impl Dictionary {
    /// A stack's id, noting in `new` its frames, symbols and itself where the store lacks them.
    pub(crate) fn intern<'a>(&self, stack: &'a [Frame], new: &mut NewEntries<'a>) -> u64 {
        let mut fids = Vec::with_capacity(stack.len());
        for f in stack {
            let fid = frame_id(f);
            if !self.frames.contains(&fid) && new.frame_ids.insert(fid) {
                new.frames.push((fid, f));
            }
            // A frame's symbol is written once; a frame first seen unresolved gets its symbol
            // when a later batch resolves it.
            if f.kind == FrameKind::User
                && f.function.is_some()
                && !self.symbolized.contains(&fid)
                && new.symbolized.insert(fid)
            {
                let key = (symbol_key(f), f.address);
                if !self.symbols.contains(&key) && new.symbol_keys.insert(key.clone()) {
                    new.symbols.push((key, f));
                }
            }
            fids.push(fid);
        }
        let sid = stack_id(&fids);
        if !self.stacks.contains(&sid) && new.stack_ids.insert(sid) {
            new.stacks.push((sid, fids));
        }
        sid
    }

    /// Takes what a successful write stored as known.
    pub(crate) fn commit(&mut self, new: NewEntries<'_>) {
        self.frames.extend(new.frame_ids);
        self.stacks.extend(new.stack_ids);
        self.symbols.extend(new.symbol_keys);
        self.symbolized.extend(new.symbolized);
    }
}

/// What the `frames` table keeps of a frame besides its key: the name of a frame resolved on
/// the host (a user frame's is in `symbols`, keyed by build ID and offset), and the source
/// location of an inlined one.
pub(crate) fn frame_columns(f: &Frame) -> (Option<&str>, Option<&str>, Option<u32>) {
    let name = match f.kind {
        FrameKind::User => None,
        _ => f.function.as_deref(),
    };
    match f.kind {
        FrameKind::Inlined | FrameKind::Interpreted => (name, f.file.as_deref(), f.line),
        _ => (name, None, None),
    }
}

/// The label columns of a sample, histogram or span row.
pub(crate) struct LabelColumns<'a> {
    pub host: Option<&'a str>,
    pub service: Option<&'a str>,
    pub comm: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub pid: Option<i32>,
    pub tid: Option<i32>,
    pub run: Option<i64>,
}

impl<'a> LabelColumns<'a> {
    pub(crate) fn of(labels: Option<&'a Labels>) -> LabelColumns<'a> {
        let l = |k: &str| labels.and_then(|ls| ls.get(k)).map(String::as_str);
        LabelColumns {
            host: l("host"),
            service: l("service"),
            comm: l("comm"),
            exe: l("exe"),
            cgroup: l("cgroup"),
            pid: l("pid").and_then(|v| v.parse().ok()),
            tid: l("tid").and_then(|v| v.parse().ok()),
            run: l("run").and_then(|v| v.parse().ok()),
        }
    }
}

/// A span's sample (by index, when it names one of the batch's), and the labels it takes: its
/// sample's, or the batch's first sample's when it has none (one batch is one host's, and one
/// run's).
pub(crate) fn span_source<'a>(batch: &'a Batch, sp: &Span) -> (Option<usize>, LabelColumns<'a>) {
    let own = sp
        .sample
        .map(|i| i as usize)
        .filter(|&i| i < batch.samples.len());
    let labels = own.or((!batch.samples.is_empty()).then_some(0));
    (
        own,
        LabelColumns::of(labels.map(|i| &batch.samples[i].labels)),
    )
}
