//! Reading the raw bytes BPF maps and ring buffers hand back: integers at offsets, `comm`
//! strings, stack address lists, per-CPU counters.

use libbpf_rs::{MapCore, MapFlags};

/// Most frames a BPF stack map entry holds (`MAX_STACK_DEPTH` in the BPF C).
pub(crate) const STACK_DEPTH: usize = 127;

pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The NUL-terminated 16-byte `comm` at `o`.
pub(crate) fn comm_at(b: &[u8], o: usize) -> String {
    let bytes = b.get(o..o + 16).unwrap_or(&[]);
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The addresses of a stack buffer, up to the first zero.
pub(crate) fn addresses(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .take(STACK_DEPTH)
        .map(|c| u64_at(c, 0))
        .take_while(|&a| a != 0)
        .collect()
}

/// The stack with id `id` in a stack map, or `None` when it is not there.
pub(crate) fn stack_of(stacks: &(impl MapCore + ?Sized), id: i32) -> Option<Vec<u64>> {
    stacks
        .lookup(&id.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map(|raw| addresses(&raw))
}

/// The sum over CPUs of entry `idx` of a per-CPU array of u64.
pub(crate) fn percpu_sum(map: &(impl MapCore + ?Sized), idx: u32) -> u64 {
    map.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map_or(0, |per_cpu| per_cpu.iter().map(|v| u64_at(v, 0)).sum())
}

/// The pids in a targets map (`tgid -> 1`).
pub(crate) fn pids_of(targets: &(impl MapCore + ?Sized)) -> Vec<u32> {
    targets.keys().map(|k| u32_at(&k, 0)).collect()
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
            self.stale += 1;
        }
        s
    }
}

/// Empties a stack map once it is more than half of `capacity` full. Ids the filling buffer
/// holds may point into what this clears; those rows are then counted without stacks.
pub(crate) fn clear_if_half_full(stacks: &(impl MapCore + ?Sized), capacity: usize) {
    if stacks.keys().count() > capacity / 2 {
        for k in stacks.keys().collect::<Vec<_>>() {
            let _ = stacks.delete(&k);
        }
    }
}

/// Histogram counts per (pid, kind), as (power-of-two bucket, count).
pub(crate) type HistCounts = std::collections::HashMap<(u32, u32), Vec<(u32, f64)>>;

/// Reads and deletes the histogram counts of buffer `old` from a map keyed
/// `(pid, kind, bucket, buffer)` (`struct hist_key` in base.h and calls.bpf.c), grouped by
/// (pid, kind) as (bucket, count).
pub(crate) fn drain_hists(
    hists: &(impl MapCore + ?Sized),
    old: u32,
) -> Result<HistCounts, crate::ProfilerError> {
    let mut by = HistCounts::new();
    for key in hists.keys().collect::<Vec<_>>() {
        if key.len() < 16 || u32_at(&key, 12) != old {
            continue;
        }
        let n = hists
            .lookup(&key, MapFlags::ANY)
            .map_err(crate::ProfilerError::bpf("reading a histogram"))?
            .map_or(0, |v| u64_at(&v, 0));
        let _ = hists.delete(&key);
        by.entry((u32_at(&key, 0), u32_at(&key, 4)))
            .or_default()
            .push((u32_at(&key, 8), n as f64));
    }
    Ok(by)
}
