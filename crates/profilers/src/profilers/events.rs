//! The common machinery of tracepoint profilers built on `bpf/common.h` (syscalls, locks, io):
//! double-buffered rows of (thread, kind, stacks) -> (count, nanoseconds, bytes), power-of-two
//! histograms per (process, kind), a targets map with fork following, and a per-second budget
//! of stacks for the busy ones.
//!
//! A profiler module includes its skeleton, implements [`EventSkel`] for it with
//! [`event_skel!`], describes itself in a [`Spec`], and calls [`EventProfiler::new`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libbpf_rs::{Link, MapCore, MapFlags};

use crate::mechanics::copies::CopyReader;
use crate::mechanics::maps::{clear_if_half_full, drain_hists, percpu_sum, StackReader};
use crate::mechanics::record::{comm, decode, record};
use crate::{Drained, Event, ProfilerError, ProfilerStats, RawHistogram, StartOptions};

/// What the generic code needs of a skeleton built on `common.h`.
pub(crate) trait EventSkel {
    fn rows(&self) -> &dyn MapCore;
    fn hists(&self) -> &dyn MapCore;
    fn stacks(&self) -> &dyn MapCore;
    fn stats(&self) -> &dyn MapCore;
    fn targets(&self) -> &dyn MapCore;
    fn copies(&self) -> &dyn MapCore;
    fn dwarf_pids(&self) -> &dyn MapCore;
    fn copy_stats(&self) -> &dyn MapCore;
    fn set_buffer(&mut self, buffer: u32);
    fn set_sample_every(&mut self, every: u32);
}

/// Implements [`EventSkel`] for a generated skeleton type.
macro_rules! event_skel {
    ($skel:ident) => {
        impl crate::profilers::events::EventSkel for $skel<'static> {
            fn rows(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.rows
            }
            fn hists(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.hists
            }
            fn stacks(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.stacks
            }
            fn stats(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.stats
            }
            fn targets(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.targets
            }
            fn copies(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.copies
            }
            fn dwarf_pids(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.dwarf_pids
            }
            fn copy_stats(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.copy_stats
            }
            fn set_buffer(&mut self, buffer: u32) {
                if let Some(bss) = self.maps.bss_data.as_deref_mut() {
                    bss.active_buffer = buffer;
                }
            }
            fn set_sample_every(&mut self, every: u32) {
                if let Some(data) = self.maps.data_data.as_deref_mut() {
                    data.sample_every = every;
                }
            }
        }
    };
}
pub(crate) use event_skel;

/// `struct row_key` of common.h: a thread's events of one kind, with their stacks, in buffer
/// `buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RowKey {
    pid: u32,
    tid: u32,
    cgroup_id: u64,
    kernel_stack: i32,
    user_stack: i32,
    kind: u32,
    buffer: u32,
    comm: [u8; 16],
}
record!(RowKey, "row_key", 48);

/// `struct row_value` of common.h: one row's sums.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowValue {
    pub count: u64,
    pub ns: u64,
    pub bytes: u64,
}
record!(RowValue, "row_value", 24);

/// How one event profiler reads its maps.
pub(crate) struct Spec {
    pub info: &'static baton_model::ProfilerInfo,
    /// What drives it, for summaries.
    pub event: &'static str,
    /// The label the row's kind becomes (`syscall`, `op`).
    pub label: &'static str,
    pub kind_name: fn(u32) -> String,
    /// The registry's values, in order, from a row.
    pub values: fn(&RowValue) -> Vec<u64>,
    pub histogram: &'static str,
    /// The histogram's key for a kind (`write`), or one key for all.
    pub hist_key: fn(u32) -> String,
    /// Stat slots: events recorded, lost, user-stack failures, kernel-stack failures, forks.
    pub stat_events: u32,
    pub stat_lost: u32,
    pub stat_ustack: u32,
    pub stat_kstack: Option<u32>,
    pub stat_forks: u32,
}

const STACK_ENTRIES: usize = 16384;

/// A running event profiler over skeleton `S`.
pub(crate) struct EventProfiler<S: EventSkel> {
    /// First, so its reader thread stops before the ring's map is closed.
    copies: Option<CopyReader>,
    skel: S,
    _links: Vec<Link>,
    spec: &'static Spec,
    active: u32,
    stale_stacks: u64,
    /// Events per second whose stacks are taken, when the profiler samples stacks.
    budget: Option<u64>,
    last_adapt: (Instant, u64),
}

impl<S: EventSkel> EventProfiler<S> {
    /// Wraps a loaded and attached skeleton; adds the targets to its map.
    pub(crate) fn new(
        skel: S,
        links: Vec<Link>,
        spec: &'static Spec,
        o: &StartOptions,
        budget: Option<u64>,
    ) -> Result<EventProfiler<S>, ProfilerError> {
        let copies = CopyReader::start(
            &format!("baton-{}", spec.info.name),
            skel.copies(),
            skel.dwarf_pids(),
            o.dwarf,
            o.targets.as_deref(),
        )?;
        crate::mechanics::maps::add_targets(skel.targets(), o.targets.as_deref().unwrap_or(&[]))?;
        Ok(EventProfiler {
            copies,
            skel,
            _links: links,
            spec,
            active: 0,
            stale_stacks: 0,
            budget,
            last_adapt: (Instant::now(), 0),
        })
    }

    fn stat(&self, i: u32) -> u64 {
        percpu_sum(self.skel.stats(), i)
    }
}

impl<S: EventSkel> crate::Profiler for EventProfiler<S> {
    fn info(&self) -> &'static baton_model::ProfilerInfo {
        self.spec.info
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        let old = self.active;
        self.active = 1 - old;
        self.skel.set_buffer(self.active);
        std::thread::sleep(Duration::from_millis(5));
        let mut out = Drained::default();
        let rows = self.skel.rows();
        let mut stacks = StackReader::new(self.skel.stacks());
        let mut comms: HashMap<u32, String> = HashMap::new();
        for raw in rows.keys().collect::<Vec<_>>() {
            let Ok(key) = decode::<RowKey>(&raw) else {
                continue;
            };
            if key.buffer != old {
                continue;
            }
            let v = rows
                .lookup(&raw, MapFlags::ANY)
                .map_err(ProfilerError::bpf("reading a row"))?;
            let _ = rows.delete(&raw);
            let Some(Ok(value)) = v.map(|v| decode::<RowValue>(&v)) else {
                continue;
            };
            let comm = comm(&key.comm);
            comms.entry(key.pid).or_insert_with(|| comm.clone());
            out.events.push(Event {
                pid: key.pid,
                tid: key.tid,
                cgroup_id: key.cgroup_id,
                comm,
                kernel: stacks.get(key.kernel_stack),
                user: stacks.get(key.user_stack),
                count: value.count,
                values: (self.spec.values)(&value),
                weight: 1.0,
                labels: vec![(self.spec.label, (self.spec.kind_name)(key.kind))],
                frames: Vec::new(),
            });
        }
        if let Some(c) = &self.copies {
            for (k, sums) in c.take(self.skel.dwarf_pids()) {
                let kernel = stacks.get(k.kernel_stack);
                comms.entry(k.pid).or_insert_with(|| k.comm.clone());
                let value = RowValue {
                    count: sums.count,
                    ns: sums.ns,
                    bytes: sums.bytes,
                };
                out.events.push(Event {
                    pid: k.pid,
                    tid: k.tid,
                    cgroup_id: k.cgroup_id,
                    comm: k.comm,
                    kernel,
                    user: k.user,
                    count: sums.count,
                    values: (self.spec.values)(&value),
                    weight: 1.0,
                    labels: vec![(self.spec.label, (self.spec.kind_name)(k.what))],
                    frames: Vec::new(),
                });
            }
        }
        self.stale_stacks += stacks.stale;
        clear_if_half_full(self.skel.stacks(), STACK_ENTRIES);
        let by = drain_hists(self.skel.hists(), old)?;
        for ((pid, kind), buckets) in by {
            let comm = comms
                .get(&pid)
                .cloned()
                .or_else(|| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .ok()
                        .map(|c| c.trim().to_string())
                })
                .unwrap_or_default();
            out.histograms.push(RawHistogram {
                name: self.spec.histogram,
                unit: "nanoseconds",
                key: (self.spec.hist_key)(kind),
                pid,
                comm,
                buckets,
                le_buckets: Vec::new(),
            });
        }
        Ok(out)
    }

    fn stats(&self) -> ProfilerStats {
        let (dwarf_copied, dwarf_lost, unwind) = self
            .copies
            .as_ref()
            .map(|c| c.stats(self.skel.copy_stats()))
            .unwrap_or_default();
        ProfilerStats {
            dwarf_copied,
            dwarf_ring_full: dwarf_lost,
            unwind,
            samples: self.stat(self.spec.stat_events),
            lost_map_full: self.stat(self.spec.stat_lost),
            user_stack_failed: self.stat(self.spec.stat_ustack),
            kernel_stack_failed: self.spec.stat_kstack.map_or(0, |i| self.stat(i)),
            forks_followed: self.stat(self.spec.stat_forks),
            stack_lookup_missing: self.stale_stacks,
            ..ProfilerStats::default()
        }
    }

    fn target_pids(&self) -> Vec<u32> {
        crate::mechanics::maps::pids_of(self.skel.targets())
    }

    /// Sets stack sampling from the event rate since the last call, so about `budget` events
    /// a second have their stacks taken.
    fn tick(&mut self) {
        let Some(budget) = self.budget else { return };
        let seen = self.stat(self.spec.stat_events);
        let (t0, s0) = self.last_adapt;
        let secs = t0.elapsed().as_secs_f64();
        if secs < 0.1 {
            return;
        }
        self.last_adapt = (Instant::now(), seen);
        let rate = seen.saturating_sub(s0) as f64 / secs;
        let every = (rate / budget.max(1) as f64).ceil().clamp(1.0, 1e6) as u32;
        self.skel.set_sample_every(every);
    }

    fn event_name(&self) -> String {
        self.spec.event.into()
    }

    fn observe_maps(&mut self, pid: u32, maps: &str) {
        if let Some(c) = &self.copies {
            c.observe_maps(self.skel.dwarf_pids(), pid, maps);
        }
    }
}

/// The fork link, if any, and the links of `progs` attached in order, each failure named by
/// its context.
pub(crate) fn attach_all<const N: usize>(
    fork: Option<Link>,
    progs: [(&libbpf_rs::ProgramMut<'_>, &'static str); N],
) -> Result<Vec<Link>, ProfilerError> {
    let mut links: Vec<Link> = fork.into_iter().collect();
    for (prog, context) in progs {
        links.push(prog.attach().map_err(ProfilerError::bpf(context))?);
    }
    Ok(links)
}
