//! Reading BPF maps: stack maps, per-CPU counters, target sets and power-of-two histograms,
//! every value decoded through [`crate::mechanics::record`].

use std::time::{Duration, Instant};

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

/// `struct row_key` of base.h: a thread's events of one kind (a syscall number, an operation, a
/// block's state), with their stacks, in buffer `buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RowKey {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub kernel_stack: i32,
    pub user_stack: i32,
    pub kind: u32,
    pub buffer: u32,
    pub comm: [u8; 16],
    /// The thread's interned context (`bpf/threadctx.h`), 0: none.
    pub ctx: u64,
}
record!(RowKey, "row_key", 56);

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

/// Reads and deletes the histograms of buffer `old` (see [`drain_hists`]) as histograms of
/// nanoseconds named `name`, keyed by `key_of(kind)`, each with its process's name from
/// `comms`, else from `/proc`.
pub(crate) fn drain_histograms(
    hists: &(impl MapCore + ?Sized),
    old: u32,
    name: &'static str,
    key_of: impl Fn(u32) -> String,
    comms: &std::collections::HashMap<u32, String>,
) -> Result<Vec<crate::RawHistogram>, crate::ProfilerError> {
    let by = drain_hists(hists, old)?;
    Ok(by
        .into_iter()
        .map(|((pid, kind), buckets)| crate::RawHistogram {
            name,
            unit: "nanoseconds",
            key: key_of(kind),
            pid,
            comm: comms
                .get(&pid)
                .cloned()
                .unwrap_or_else(|| crate::sys::comm_of(pid)),
            buckets,
            le_buckets: Vec::new(),
        })
        .collect())
}

/// Reads and deletes the histogram counts of buffer `old` from a map keyed by [`HistKey`],
/// grouped by (pid, kind) as (bucket, count).
fn drain_hists(
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

/// Which half of a program's double-buffered maps BPF fills (its `active_buffer`); user space
/// drains the other.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    active: u32,
}

impl Buffers {
    /// The buffer BPF fills now.
    pub(crate) fn active(&self) -> u32 {
        self.active
    }

    /// Makes BPF fill the other buffer (`set` writes the program's `active_buffer`), waits for
    /// the programs that read the old index just before, and returns the buffer to drain.
    pub(crate) fn flip(&mut self, set: impl FnOnce(u32)) -> u32 {
        let old = self.active;
        self.active = 1 - old;
        set(self.active);
        // A program that read the old index just before the flip finishes within microseconds.
        std::thread::sleep(Duration::from_millis(5));
        old
    }
}

/// Flips the [`Buffers`] `$buffers` of skeleton `$skel`, whose `.bss` holds `active_buffer`;
/// evaluates to the buffer to drain.
macro_rules! flip_buffers {
    ($buffers:expr, $skel:expr) => {{
        let bss = &mut $skel.maps.bss_data;
        $buffers.flip(|b| {
            if let Some(bss) = bss.as_deref_mut() {
                bss.active_buffer = b;
            }
        })
    }};
}
pub(crate) use flip_buffers;

/// One-in-N sampling set from the rate of events, so that about a budget of them a second are
/// taken (stacks, tracked switch-outs).
#[derive(Debug)]
pub(crate) struct RateSampler {
    /// When, and the events seen so far, at the last decision.
    last: (Instant, u64),
}

impl RateSampler {
    pub(crate) fn new() -> RateSampler {
        RateSampler {
            last: (Instant::now(), 0),
        }
    }

    /// N for `budget` events a second, `seen` being the events so far; `None` until 0.1 s has
    /// passed since the last decision.
    pub(crate) fn every(&mut self, seen: u64, budget: u64) -> Option<u32> {
        let (t0, s0) = self.last;
        let secs = t0.elapsed().as_secs_f64();
        if secs < 0.1 {
            return None;
        }
        self.last = (Instant::now(), seen);
        let rate = seen.saturating_sub(s0) as f64 / secs;
        Some((rate / budget.max(1) as f64).ceil().clamp(1.0, 1e6) as u32)
    }
}

/// Where a program keeps the counters [`crate::ProfilerStats`] reports, as slots of its per-CPU
/// `stats` array (the program's `enum stat_index`).
#[derive(Debug)]
pub(crate) struct StatSlots {
    /// Events recorded.
    pub samples: u32,
    /// Events BPF had no room for, summed.
    pub lost: &'static [u32],
    pub user_stack_failed: u32,
    pub kernel_stack_failed: Option<u32>,
    pub forks_followed: u32,
}

impl StatSlots {
    /// The slots of a program whose enum opens with `STATS_HEAD` of bpf/stats.h: samples, lost
    /// and user stacks failed first; `lost` counts that one slot alone.
    pub(crate) const fn headed(kernel_stack_failed: Option<u32>, forks_followed: u32) -> StatSlots {
        StatSlots {
            samples: 0,
            lost: &[1],
            user_stack_failed: 2,
            kernel_stack_failed,
            forks_followed,
        }
    }

    /// The counters, read from the program's `stats` map.
    pub(crate) fn read(&self, stats: &(impl MapCore + ?Sized)) -> crate::ProfilerStats {
        let read = |i: u32| percpu_sum(stats, i);
        crate::ProfilerStats {
            samples: read(self.samples),
            lost_map_full: self.lost.iter().map(|&i| read(i)).sum(),
            user_stack_failed: read(self.user_stack_failed),
            kernel_stack_failed: self.kernel_stack_failed.map_or(0, read),
            forks_followed: read(self.forks_followed),
            ..crate::ProfilerStats::default()
        }
    }

    /// As [`StatSlots::read`], with the stack ids user space found gone while draining.
    pub(crate) fn read_with_stale(
        &self,
        stats: &(impl MapCore + ?Sized),
        stale_stacks: u64,
    ) -> crate::ProfilerStats {
        crate::ProfilerStats {
            stack_lookup_missing: stale_stacks,
            ..self.read(stats)
        }
    }
}
