//! The dictionary both backends share: frame and stack ids, symbol keys, the `detail` column,
//! and naming stacks from cached frames.

use std::collections::HashMap;

use baton_model::batch::fnv1a;
use baton_model::{Frame, FrameKind, NamedStacks, ValueType};

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

pub(crate) fn frame_id(f: &Frame) -> u64 {
    // Inlined frames share their caller's address: their function tells them apart.
    let inlined = match f.kind {
        FrameKind::Inlined => f.function.as_deref().unwrap_or(""),
        _ => "",
    };
    fnv1a(&[
        &[f.kind.as_u8()],
        f.module.as_bytes(),
        f.build_id.as_deref().unwrap_or("").as_bytes(),
        &f.address.to_le_bytes(),
        inlined.as_bytes(),
    ])
}

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

/// Per-stack totals as interned names (inlined functions first), from the caches a backend
/// filled: equal names merge in the tree.
pub(crate) fn name_stacks(
    rows: &[(u64, f64)],
    value_type: Option<ValueType>,
    stack_cache: &IdMap<Vec<u64>>,
    name_cache: &IdMap<String>,
    inlined_cache: &IdMap<Vec<Frame>>,
) -> NamedStacks {
    let mut out = NamedStacks {
        value_type,
        names: Vec::new(),
        stacks: Vec::with_capacity(rows.len()),
    };
    // Looked up once per frame of every stack (millions for a large profile): a cheap hash of
    // ids that are already well-mixed FNV hashes.
    let mut by_frame: HashMap<u64, Vec<u32>, BuildIdHash> =
        HashMap::with_capacity_and_hasher(4096, BuildIdHash);
    let mut by_name: HashMap<String, u32> = HashMap::new();
    for (sid, v) in rows {
        let Some(fids) = stack_cache.get(sid) else {
            continue;
        };
        let mut idx = Vec::with_capacity(fids.len());
        for fid in fids {
            if let Some(is) = by_frame.get(fid) {
                idx.extend_from_slice(is);
                continue;
            }
            let Some(name) = name_cache.get(fid) else {
                continue;
            };
            let mut intern = |n: String| {
                *by_name.entry(n.clone()).or_insert_with(|| {
                    out.names.push(n);
                    (out.names.len() - 1) as u32
                })
            };
            let mut is: Vec<u32> = inlined_cache
                .get(fid)
                .into_iter()
                .flatten()
                .map(|f| intern(f.display_name()))
                .collect();
            is.push(intern(name.clone()));
            idx.extend_from_slice(&is);
            by_frame.insert(*fid, is);
        }
        out.stacks.push((idx, *v));
    }
    out
}

/// Caches a frame read back from the store: itself, its display name, and the frames inlined
/// at its address from a late symbol's chain (JSON `[[name, file, line], …]`, innermost first).
pub(crate) fn cache_frame(
    fid: u64,
    f: Frame,
    inlined: Option<&str>,
    frames: &mut IdMap<Frame>,
    names: &mut IdMap<String>,
    inlined_frames: &mut IdMap<Vec<Frame>>,
) {
    let chain: Vec<(String, Option<String>, Option<u32>)> = inlined
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    if !chain.is_empty() {
        let list = chain
            .into_iter()
            .map(|(name, file, line)| Frame {
                kind: FrameKind::Inlined,
                function: Some(name),
                module: f.module.clone(),
                build_id: f.build_id.clone(),
                address: f.address,
                file,
                line,
            })
            .collect();
        inlined_frames.insert(fid, list);
    }
    names.insert(fid, f.display_name());
    frames.insert(fid, f);
}

/// The stack ids the timeline's spans name, sorted and without repeats.
pub(crate) fn span_stack_ids(spans: &[crate::TimelineSpan]) -> Vec<u64> {
    let mut sids: Vec<u64> = spans
        .iter()
        .filter_map(|s| s.stack.as_deref()?.parse().ok())
        .collect();
    sids.sort_unstable();
    sids.dedup();
    sids
}

/// The timeline's stacks: each stack id (in decimal, too wide for JavaScript numbers) to its
/// function names, leaf first, from the caches a backend filled for those ids.
pub(crate) fn timeline_stacks(
    sids: &[u64],
    stack_cache: &IdMap<Vec<u64>>,
    name_cache: &IdMap<String>,
    inlined_cache: &IdMap<Vec<Frame>>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for &sid in sids {
        let named = name_stacks(&[(sid, 0.0)], None, stack_cache, name_cache, inlined_cache);
        if let Some((idx, _)) = named.stacks.first() {
            let names = idx
                .iter()
                .map(|&i| named.names[i as usize].clone())
                .collect();
            out.insert(sid.to_string(), names);
        }
    }
    out
}
