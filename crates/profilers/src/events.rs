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

use crate::copies::CopyReader;
use crate::raw::{
    clear_if_half_full, comm_at, drain_hists, percpu_sum, u32_at, u64_at, StackReader,
};
use crate::{sys, Drained, Event, ProfilerError, ProfilerStats, RawHistogram, StartOptions};

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
        impl crate::events::EventSkel for $skel<'static> {
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

/// One row's sums as BPF keeps them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowValue {
    pub count: u64,
    pub ns: u64,
    pub bytes: u64,
}

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
        for &p in o.targets.iter().flatten() {
            skel.targets()
                .update(&p.to_ne_bytes(), &[1], MapFlags::ANY)
                .map_err(ProfilerError::bpf("adding a target pid"))?;
        }
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

/// Checks targets exist before anything is loaded.
pub(crate) fn check_targets(o: &StartOptions) -> Result<(), ProfilerError> {
    if !sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission);
    }
    if let Some(pids) = &o.targets {
        if let Some(&p) = pids.iter().find(|&&p| !sys::process_alive(p)) {
            return Err(ProfilerError::NoSuchProcess(p));
        }
    }
    Ok(())
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
        for key in rows.keys().collect::<Vec<_>>() {
            if key.len() < 48 || u32_at(&key, 28) != old {
                continue;
            }
            let v = rows
                .lookup(&key, MapFlags::ANY)
                .map_err(ProfilerError::bpf("reading a row"))?;
            let _ = rows.delete(&key);
            let Some(v) = v.filter(|v| v.len() >= 24) else {
                continue;
            };
            let value = RowValue {
                count: u64_at(&v, 0),
                ns: u64_at(&v, 8),
                bytes: u64_at(&v, 16),
            };
            let kernel = stacks.get(u32_at(&key, 16) as i32);
            let user = stacks.get(u32_at(&key, 20) as i32);
            let pid = u32_at(&key, 0);
            let comm = comm_at(&key, 32);
            comms.entry(pid).or_insert_with(|| comm.clone());
            out.events.push(Event {
                pid,
                tid: u32_at(&key, 4),
                cgroup_id: u64_at(&key, 8),
                comm,
                kernel,
                user,
                count: value.count,
                values: (self.spec.values)(&value),
                weight: 1.0,
                labels: vec![(self.spec.label, (self.spec.kind_name)(u32_at(&key, 24)))],
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
        crate::raw::pids_of(self.skel.targets())
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

/// Opens, configures (targets, fork following) and loads a skeleton built on `common.h`.
/// An optional last argument, `|ro| { … }`, sets the program's own read-only variables too.
macro_rules! open_event_skel {
    ($builder:ident, $o:expr, $what:literal) => {
        crate::events::open_event_skel!($builder, $o, $what, |_ro| {})
    };
    ($builder:ident, $o:expr, $what:literal, |$ro:ident| $extra:block) => {{
        let storage: &'static mut std::mem::MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
        let mut open = libbpf_rs::skel::SkelBuilder::open($builder::default(), storage).map_err(
            crate::ProfilerError::bpf(concat!("opening the ", $what, " skeleton")),
        )?;
        let follow = $o.targets.is_some() && $o.follow_forks;
        if let Some($ro) = open.maps.rodata_data.as_deref_mut() {
            $ro.filter_targets = u8::from($o.targets.is_some());
            $ro.follow_forks = u8::from(follow);
            $ro.dwarf = u8::from($o.dwarf);
            $extra
        }
        if !$o.dwarf {
            // Nothing is ever copied: keep the ring at its smallest.
            open.maps
                .copies
                .set_max_entries(4096)
                .map_err(crate::ProfilerError::bpf("sizing the copy ring"))?;
        }
        if !follow {
            open.progs.on_fork.set_autoload(false);
        }
        let skel = libbpf_rs::skel::OpenSkel::load(open).map_err(crate::ProfilerError::bpf(
            concat!("loading the ", $what, " programs"),
        ))?;
        let mut links = Vec::new();
        if follow {
            links.push(
                skel.progs
                    .on_fork
                    .attach()
                    .map_err(crate::ProfilerError::bpf("attaching the fork tracepoint"))?,
            );
        }
        (skel, links)
    }};
}
pub(crate) use open_event_skel;
