//! The common machinery of tracepoint profilers built on `bpf/common.h` (syscalls, locks, io):
//! double-buffered rows of (thread, kind, stacks) -> (count, nanoseconds, bytes), power-of-two
//! histograms per (process, kind), a targets map with fork following, and a per-second budget
//! of stacks for the busy ones.
//!
//! A profiler module includes its skeleton, implements [`EventSkel`] for it with
//! [`event_skel!`], describes itself in a [`Spec`], and calls [`EventProfiler::new`].

use std::collections::HashMap;

use libbpf_rs::{Link, MapCore, MapFlags};

use crate::mechanics::copies::CopyReader;
use crate::mechanics::maps::{
    clear_if_half_full, drain_histograms, percpu_sum, Buffers, RateSampler, RowKey, StackReader,
    StatSlots,
};
use crate::mechanics::record::{comm, decode, record};
use crate::mechanics::threadctx::ThreadContexts;
use crate::{Drained, Event, ProfilerError, ProfilerStats, StartOptions};

/// What the generic code needs of a skeleton built on `common.h`.
pub(crate) trait EventSkel {
    fn rows(&self) -> &dyn MapCore;
    fn hists(&self) -> &dyn MapCore;
    fn stacks(&self) -> &dyn MapCore;
    fn stats(&self) -> &dyn MapCore;
    fn targets(&self) -> &dyn MapCore;
    fn copies(&self) -> &dyn MapCore;
    fn dwarf_pids(&self) -> &dyn MapCore;
    fn interp_procs(&self) -> &dyn MapCore;
    fn copy_stats(&self) -> &dyn MapCore;
    fn ctx_procs(&self) -> &dyn MapCore;
    fn ctx_records(&self) -> &dyn MapCore;
    fn ctx_stats(&self) -> &dyn MapCore;
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
            fn interp_procs(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.interp_procs
            }
            fn copy_stats(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.copy_stats
            }
            fn ctx_procs(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.ctx_procs
            }
            fn ctx_records(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.ctx_records
            }
            fn ctx_stats(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.ctx_stats
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
    pub kind_name: fn(u32) -> String,
    /// The registry's values, in order, from a row.
    pub values: fn(&RowValue) -> Vec<u64>,
    /// The histogram's key for a kind (`write`), or one key for all.
    pub hist_key: fn(u32) -> String,
    /// Where its program keeps its counters.
    pub stats: StatSlots,
}

impl Spec {
    /// The label the row's kind becomes (`syscall`, `op`): the profiler's one label.
    fn label(&self) -> &'static str {
        self.info.labels[0]
    }

    /// The histogram of each kind: the profiler's one histogram.
    fn histogram(&self) -> &'static str {
        self.info.histograms.first().copied().unwrap_or("")
    }
}

const STACK_ENTRIES: usize = 16384;

/// A running event profiler over skeleton `S`.
pub(crate) struct EventProfiler<S: EventSkel> {
    /// First, so its reader thread stops before the ring's map is closed.
    copies: Option<CopyReader>,
    skel: S,
    _links: Vec<Link>,
    spec: &'static Spec,
    buffers: Buffers,
    stale_stacks: u64,
    /// Events per second whose stacks are taken, when the profiler samples stacks.
    budget: Option<u64>,
    sampler: RateSampler,
    contexts: ThreadContexts,
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
            skel.interp_procs(),
            o.dwarf,
            o.targets.as_deref(),
        )?;
        crate::mechanics::maps::add_targets(skel.targets(), o.targets.as_deref().unwrap_or(&[]))?;
        Ok(EventProfiler {
            copies,
            skel,
            _links: links,
            spec,
            buffers: Buffers::default(),
            stale_stacks: 0,
            budget,
            sampler: RateSampler::new(),
            contexts: ThreadContexts::default(),
        })
    }
}

impl<S: EventSkel> EventProfiler<S> {
    /// The skeleton, for profilers that read maps of their own beside the rows.
    pub(crate) fn skel(&self) -> &S {
        &self.skel
    }
}

impl<S: EventSkel> crate::Profiler for EventProfiler<S> {
    fn info(&self) -> &'static baton_model::ProfilerInfo {
        self.spec.info
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        let skel = &mut self.skel;
        let old = self.buffers.flip(|b| skel.set_buffer(b));
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
                labels: vec![(self.spec.label(), (self.spec.kind_name)(key.kind))],
                frames: Vec::new(),
                keep_zero: 0,
                context: self.contexts.labels(key.ctx, self.skel.ctx_records()),
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
                    labels: vec![(self.spec.label(), (self.spec.kind_name)(k.what))],
                    frames: Vec::new(),
                    keep_zero: 0,
                    context: self.contexts.labels(k.ctx, self.skel.ctx_records()),
                });
            }
        }
        self.stale_stacks += stacks.stale;
        self.contexts.prune(self.skel.ctx_procs());
        clear_if_half_full(self.skel.stacks(), STACK_ENTRIES);
        out.histograms = drain_histograms(
            self.skel.hists(),
            old,
            self.spec.histogram(),
            self.spec.hist_key,
            &comms,
        )?;
        Ok(out)
    }

    fn stats(&self) -> ProfilerStats {
        let mut s = CopyReader::add_stats(
            self.copies.as_ref(),
            self.skel.copy_stats(),
            self.spec
                .stats
                .read_with_stale(self.skel.stats(), self.stale_stacks),
        );
        s.context = self.contexts.stats(self.skel.ctx_stats());
        s
    }

    fn target_pids(&self) -> Vec<u32> {
        crate::mechanics::maps::pids_of(self.skel.targets())
    }

    /// Sets stack sampling from the event rate since the last call, so about `budget` events
    /// a second have their stacks taken.
    fn tick(&mut self) {
        let Some(budget) = self.budget else { return };
        let seen = percpu_sum(self.skel.stats(), self.spec.stats.samples);
        if let Some(every) = self.sampler.every(seen, budget) {
            self.skel.set_sample_every(every);
        }
    }

    fn event_name(&self) -> String {
        self.spec.event.into()
    }

    fn observe_maps(&mut self, pid: u32, maps: &str) {
        if let Some(c) = &self.copies {
            c.observe_maps(self.skel.dwarf_pids(), pid, maps);
        }
        self.contexts.observe(pid, maps, self.skel.ctx_procs());
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

/// Starts an event profiler: opens and loads skeleton `$builder` of program `$name`, attaches
/// `$prog`s to their tracepoints (`$what`, named in errors), and wraps it with `$spec`;
/// `$budget` caps the stacks taken per second, if any.
macro_rules! start_events {
    ($builder:ident, $name:literal, $o:expr, $spec:expr, $budget:expr,
     [$(($prog:ident, $what:literal)),+ $(,)?]) => {{
        let (skel, fork) = crate::mechanics::skel::open_copying!($builder, $name, $o);
        let links = crate::profilers::events::attach_all(
            fork,
            [$((&skel.progs.$prog, concat!("attaching to ", $what))),+],
        )?;
        Ok(Box::new(crate::profilers::events::EventProfiler::new(
            skel, links, $spec, $o, $budget,
        )?))
    }};
}
pub(crate) use start_events;
