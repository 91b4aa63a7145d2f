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
