//! Reading BPF maps: stack maps, per-CPU counters, target sets and power-of-two histograms,
//! every value decoded through [`crate::mechanics::record`].

use libbpf_rs::{MapCore, MapFlags};

use crate::mechanics::record::{addresses, decode, record};

/// Most frames a BPF stack map entry holds (`MAX_STACK_DEPTH` in the BPF C).
pub(crate) const STACK_DEPTH: usize = 127;

/// A stack map entry: `MAX_STACK_DEPTH` addresses, leaf first, zero after the last.
pub(crate) type StackEntry = [u64; STACK_DEPTH];

/// `struct hist_key` of base.h: a histogram bucket of (process, kind) in buffer `buffer`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistKey {
    pub pid: u32,
    pub kind: u32,
    pub bucket: u32,
    pub buffer: u32,
}
record!(HistKey, "hist_key", 16);

/// The stack with id `id` in a stack map, or `None` when it is not there.
pub(crate) fn stack_of(stacks: &(impl MapCore + ?Sized), id: i32) -> Option<Vec<u64>> {
    let raw = stacks.lookup(&id.to_ne_bytes(), MapFlags::ANY).ok()??;
    Some(addresses(&decode::<StackEntry>(&raw).ok()?))
}

/// The sum over CPUs of entry `idx` of a per-CPU array of u64.
pub(crate) fn percpu_sum(map: &(impl MapCore + ?Sized), idx: u32) -> u64 {
    map.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map_or(0, |per_cpu| {
            per_cpu.iter().filter_map(|v| decode::<u64>(v).ok()).sum()
        })
}

/// The u64 value at `key` of a map, if there is one.
pub(crate) fn u64_value(map: &(impl MapCore + ?Sized), key: &[u8]) -> Option<u64> {
    let raw = map.lookup(key, MapFlags::ANY).ok()??;
    decode::<u64>(&raw).ok()
}

/// The pids in a targets map (`tgid -> 1`).
pub(crate) fn pids_of(targets: &(impl MapCore + ?Sized)) -> Vec<u32> {
    targets
        .keys()
        .filter_map(|k| decode::<u32>(&k).ok())
        .collect()
}

/// Adds `pids` to a targets map.
pub(crate) fn add_targets(
    targets: &(impl MapCore + ?Sized),
    pids: &[u32],
) -> Result<(), crate::ProfilerError> {
    for p in pids {
        targets
            .update(&p.to_ne_bytes(), &[1], MapFlags::ANY)
            .map_err(crate::ProfilerError::bpf("adding a target pid"))?;
    }
    Ok(())
}

/// Reads a BPF stack map once per id during one drain, counting ids whose stack is gone.
pub(crate) struct StackReader<'a, M: MapCore + ?Sized> {
    map: &'a M,
    cache: std::collections::HashMap<i32, Vec<u64>>,
    /// Ids recorded by BPF whose stack was no longer in the map.
    pub stale: u64,
}

impl<'a, M: MapCore + ?Sized> StackReader<'a, M> {
    pub(crate) fn new(map: &'a M) -> Self {
        StackReader {
            map,
            cache: std::collections::HashMap::new(),
            stale: 0,
        }
    }

    /// The addresses of stack `id`, leaf first; empty for a negative id (no stack taken).
    pub(crate) fn get(&mut self, id: i32) -> Vec<u64> {
        self.get_weighted(id, 1)
    }

    /// As [`StackReader::get`], counting a missing stack `weight` times in `stale`.
    pub(crate) fn get_weighted(&mut self, id: i32, weight: u64) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        let map = self.map;
        let s = self
            .cache
            .entry(id)
            .or_insert_with(|| stack_of(map, id).unwrap_or_default())
            .clone();
        if s.is_empty() {
            self.stale += weight;
        }
        s
    }
}

/// Empties a stack map.
pub(crate) fn clear(stacks: &(impl MapCore + ?Sized)) {
    for k in stacks.keys().collect::<Vec<_>>() {
        let _ = stacks.delete(&k);
    }
}

/// Empties a stack map once it is more than half of `capacity` full. Ids the filling buffer
/// holds may point into what this clears; those rows are then counted without stacks.
pub(crate) fn clear_if_half_full(stacks: &(impl MapCore + ?Sized), capacity: usize) {
    if stacks.keys().count() > capacity / 2 {
        clear(stacks);
    }
}

/// Histogram counts per (pid, kind), as (power-of-two bucket, count).
pub(crate) type HistCounts = std::collections::HashMap<(u32, u32), Vec<(u32, f64)>>;

/// Reads and deletes the histogram counts of buffer `old` from a map keyed by [`HistKey`],
/// grouped by (pid, kind) as (bucket, count).
pub(crate) fn drain_hists(
    hists: &(impl MapCore + ?Sized),
    old: u32,
) -> Result<HistCounts, crate::ProfilerError> {
    let mut by = HistCounts::new();
    for raw in hists.keys().collect::<Vec<_>>() {
        let Ok(key) = decode::<HistKey>(&raw) else {
            continue;
        };
        if key.buffer != old {
            continue;
        }
        let n = hists
            .lookup(&raw, MapFlags::ANY)
            .map_err(crate::ProfilerError::bpf("reading a histogram"))?
            .and_then(|v| decode::<u64>(&v).ok())
            .unwrap_or(0);
        let _ = hists.delete(&raw);
        by.entry((key.pid, key.kind))
            .or_default()
            .push((key.bucket, n as f64));
    }
    Ok(by)
}
