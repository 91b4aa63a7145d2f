//! The CPU profiler: BPF on a sampling perf event on every online CPU, aggregating stacks in BPF
//! maps that user space drains once per window.
//!
//! Two buffers (a counts map and a stack map each) alternate: a drain flips `active_buffer`,
//! waits for in-flight programs, then reads and clears the idle buffer. Stack ids therefore never
//! point into a stack map that was cleared under them.
//!
//! User stacks come from frame pointers (`bpf_get_stackid(BPF_F_USER_STACK)`) where the code
//! keeps them. Where it does not (per module, see [`crate::unwind`]), the BPF program copies the
//! user registers and stack into a ring buffer; a reader thread unwinds each copy with DWARF CFI
//! and aggregates the stacks until the next drain. Either way a sample's user stack is a plain
//! address list tagged with its [`UserStackOrigin`], and nothing downstream differs.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_model::sync::lock;
use libbpf_rs::{Link, MapCore, MapFlags};

use crate::mechanics::maps::{flip_buffers, percpu_sum, Buffers, StackEntry, StackReader};
use crate::mechanics::perf::{open_sampling_event, SamplingEvent};
use crate::mechanics::record::{addresses, comm, decode, decode_with_tail, record};
use crate::mechanics::ring::{ring_bytes, RingCollector, RingReader};
use crate::mechanics::skel::open_targeted;
use crate::mechanics::threadctx::{ContextLabels, ThreadContexts};
use crate::mechanics::unwind::{encode_plan, CopiedRegs, DwarfUnwinder, USTACK_BYTES};
use crate::sys;
use crate::{ProfilerError, ProfilerStats};

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("cpu");
use skel::{CpuSkel, CpuSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "cpu",
    description: "on-CPU stacks sampled on a perf event (cycles, else cpu-clock)",
    // Sampling on `cycles` where a PMU exists: one PMU user per host.
    claims: &[Claim {
        resource: "pmu",
        shared: None,
    }],
    values: &[ValueInfo {
        kind: "cpu",
        unit: "nanoseconds",
        help: "CPU time, estimated as samples × the sampling period",
    }],
    histograms: &[],
    labels: &[],
    default_frequency: DEFAULT_CONTINUOUS_HZ,
    max_frequency: 999,
    default_rate: "19 Hz continuous, 99 Hz for record, per CPU",
    cost: CostClass::Low,
    costly_modes: &[],
    options: &[OptionInfo {
        name: "timeline",
        default: "on",
        help: "on: each frame-pointer sample's time goes to the timeline too; off: counts only",
    }],
};

/// Highest sampling frequency accepted; perf's default ceiling is far above what a profiler of
/// production hosts should use.
pub const MAX_FREQUENCY_HZ: u64 = 10_000;
/// Default frequency for continuous profiling (`baton up`).
pub const DEFAULT_CONTINUOUS_HZ: u64 = 19;
/// Default frequency for `baton record`.
pub const DEFAULT_RECORD_HZ: u64 = 99;

/// Ring buffer for copied stacks, per online CPU: about 60 samples of 33.5 KiB, which the reader
/// thread empties every 20 ms (a CPU at 999 Hz fills 20). The ring is a power of two between 2
/// and 64 MiB; libbpf maps it into this process, so it counts in the agent's RSS as it is used.
const COPY_RING_BYTES_PER_CPU: u64 = 2 * 1024 * 1024;
/// `struct sample_key` of cpu.bpf.c: what the counts maps count under.
#[repr(C)]
#[derive(Clone, Copy)]
struct SampleKey {
    pid: u32,
    tid: u32,
    cgroup_id: u64,
    kernel_stack: i32,
    user_stack: i32,
    comm: [u8; 16],
    ctx: u64,
}
record!(SampleKey, "sample_key", 48);

/// `struct stack_event` of cpu.bpf.c without its trailing `stack[USTACK_BYTES]`, which is read
/// where it lies in the ring.
#[repr(C)]
#[derive(Clone, Copy)]
struct StackEvent {
    pid: u32,
    tid: u32,
    cgroup_id: u64,
    comm: [u8; 16],
    regs: CopiedRegs,
    kernel_bytes: i64,
    stack_bytes: u64,
    ts: u64,
    ctx: u64,
    kernel: StackEntry,
    interp_n: u32,
    interp_status: u32,
    interp: [u64; crate::interp::MAX_INTERP_FRAMES],
}
record!(
    StackEvent,
    "stack_event",
    1112 + 8 * crate::interp::MAX_INTERP_FRAMES
);

/// `struct tick` of cpu.bpf.c: one sample's time and stacks, for the timeline; `buffer` says
/// which stack map the ids are in.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tick {
    ts: u64,
    pid: u32,
    tid: u32,
    kernel_stack: i32,
    user_stack: i32,
    buffer: u32,
    pad: u32,
}
record!(Tick, "tick", 32);

/// How the CPU profiler is set up.
#[derive(Debug, Clone)]
pub struct CpuOptions {
    pub frequency_hz: u64,
    /// Only these processes (and, with `follow_forks`, their children); `None` is every process.
    pub targets: Option<Vec<u32>>,
    pub follow_forks: bool,
    /// Force the software clock even where a PMU exists.
    pub force_cpu_clock: bool,
    /// Unwind code without frame pointers from DWARF CFI (copying the stack); when false, frame
    /// pointers only.
    pub dwarf: bool,
    /// Send every frame-pointer sample's time to user space too, for the timeline.
    pub timeline: bool,
}

/// How a sample's user stack was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStackOrigin {
    FramePointers,
    /// Unwound in user space from a copied stack with `.eh_frame` CFI.
    Dwarf,
}

/// One aggregated sample: the row every profiler hands back (raw addresses, leaf first;
/// `count` samples, and their CPU time as its value), and where its user stack came from.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub event: crate::Event,
    pub user_origin: UserStackOrigin,
}

/// The sample row of `count` samples of `period_ns` each, of a thread and its stacks.
fn sample(
    key: CopyKey,
    count: u64,
    period_ns: u64,
    user_origin: UserStackOrigin,
    context: Option<ContextLabels>,
) -> RawSample {
    let (pid, tid, cgroup_id, comm, kernel, user, _) = key;
    RawSample {
        event: crate::Event {
            pid,
            tid,
            cgroup_id,
            comm,
            kernel,
            user,
            count,
            values: vec![count * period_ns],
            weight: 1.0,
            labels: Vec::new(),
            frames: Vec::new(),
            keep_zero: 0,
            context,
        },
        user_origin,
    }
}

/// A drained window: its samples and the counters at the end of it.
#[derive(Debug)]
pub struct Window {
    pub samples: Vec<RawSample>,
    /// Timeline ticks: (`CLOCK_MONOTONIC` ns, index into `samples`).
    pub ticks: Vec<(u64, usize)>,
    pub stats: ProfilerStats,
    pub elapsed: Duration,
}

/// A running CPU profiler. Dropping it detaches every program and closes every event.
pub struct CpuProfiler {
    /// First, so the reader thread stops before the ring's map is closed.
    dwarf: Option<DwarfReader>,
    ticks: Option<TickReader>,
    skel: CpuSkel<'static>,
    _links: Vec<Link>,
    _events: Vec<OwnedFd>,
    _stats_fd: Option<OwnedFd>,
    event: SamplingEvent,
    frequency_hz: u64,
    buffers: Buffers,
    stack_lookup_missing: u64,
    last_drain: Instant,
    contexts: ThreadContexts,
}

/// Reads the tick ring; ticks of the buffer still filling wait for the next drain.
struct TickReader {
    ring: RingCollector<Tick>,
    pending: Vec<Tick>,
}

/// Bytes of tick ring per online CPU and Hz: 32-byte ticks, 16 s of them (windows are 10 s by
/// default and the ring is read at each drain).
const TICK_RING_BYTES_PER_CPU_HZ: u64 = 32 * 16;

/// Key of a copied sample once unwound: (pid, tid, cgroup, comm, kernel stack, user stack,
/// interned thread context).
type CopyKey = (u32, u32, u64, String, Vec<u64>, Vec<u64>, u64);

/// What the reader thread shares with the profiler.
struct DwarfShared {
    unwinder: Mutex<DwarfUnwinder>,
    /// Count and, with the timeline on, the time of each sample.
    stacks: Mutex<HashMap<CopyKey, (u64, Vec<u64>)>>,
    timeline: bool,
}

/// The DWARF side of the profiler: plans per pid, and the thread reading copied stacks.
struct DwarfReader {
    /// First, so the thread stops before anything it uses goes.
    reader: RingReader,
    shared: Arc<DwarfShared>,
    planned: HashSet<u32>,
}

/// Unwinds one copied sample from the ring and counts its stack.
fn take_copy(shared: &DwarfShared, data: &[u8]) {
    let Ok((ev, stack)) = decode_with_tail::<StackEvent>(data, USTACK_BYTES) else {
        return;
    };
    let kernel_frames = (ev.kernel_bytes.max(0) as usize / 8).min(ev.kernel.len());
    let kernel = addresses(&ev.kernel[..kernel_frames]);
    let stack_bytes = (ev.stack_bytes as usize).min(USTACK_BYTES);
    let stack = &stack[..stack_bytes];
    let (pid, regs) = (ev.pid, ev.regs);
    let (mut user, _complete) =
        lock(&shared.unwinder).unwind(pid, regs.ip, regs.sp, regs.bp, stack);
    let n = (ev.interp_n as usize).min(ev.interp.len());
    if n > 0 || ev.interp_status != 0 {
        user = crate::interp::splice(pid, user, &ev.interp[..n], ev.interp_status);
    }
    tracing::trace!(
        pid,
        ip = regs.ip,
        sp = regs.sp,
        stack_bytes,
        frames = user.len(),
        "unwound a copied stack"
    );
    let mut stacks = lock(&shared.stacks);
    let slot = stacks
        .entry((
            pid,
            ev.tid,
            ev.cgroup_id,
            comm(&ev.comm),
            kernel,
            user,
            ev.ctx,
        ))
        .or_default();
    slot.0 += 1;
    if shared.timeline && ev.ts != 0 {
        slot.1.push(ev.ts);
    }
}

impl CpuProfiler {
    /// Loads the BPF program and attaches it to a sampling event on every online CPU.
    pub fn start(opts: &CpuOptions) -> Result<CpuProfiler, ProfilerError> {
        if opts.frequency_hz == 0 || opts.frequency_hz > MAX_FREQUENCY_HZ {
            return Err(ProfilerError::BadFrequency(opts.frequency_hz));
        }
        let cpus_n = sys::online_cpus().map_or(1, |c| c.len()) as u64;
        let (skel, fork_link) = open_targeted!(CpuSkelBuilder, "cpu", opts, |open| {
            // Without DWARF unwinding nothing is ever copied: the ring is at its smallest.
            let copy_bytes = ring_bytes(
                opts.dwarf,
                cpus_n * COPY_RING_BYTES_PER_CPU,
                2 << 20,
                64 << 20,
            );
            open.maps
                .stack_events
                .set_max_entries(copy_bytes)
                .map_err(ProfilerError::bpf("sizing the stack ring"))?;
            if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
                ro.emit_ticks = u8::from(opts.timeline);
            }
            let tick_bytes = cpus_n * opts.frequency_hz * TICK_RING_BYTES_PER_CPU_HZ;
            open.maps
                .ticks
                .set_max_entries(ring_bytes(opts.timeline, tick_bytes, 64 << 10, 32 << 20))
                .map_err(ProfilerError::bpf("sizing the tick ring"))?;
        });

        // The targets are planned before the targets map lets BPF sample them, so their first
        // samples are unwound like the rest.
        let mut dwarf = if opts.dwarf {
            Some(start_reader(&skel, opts.timeline)?)
        } else {
            None
        };
        if let Some(d) = &mut dwarf {
            for &pid in opts.targets.iter().flatten() {
                if let Some(maps) = crate::mechanics::copies::maps_to_plan(pid) {
                    plan_pid(
                        d,
                        &skel.maps.dwarf_pids,
                        &skel.maps.interp_procs,
                        pid,
                        &maps,
                    );
                }
            }
        }
        crate::mechanics::maps::add_targets(
            &skel.maps.targets,
            opts.targets.as_deref().unwrap_or(&[]),
        )?;
        let mut links: Vec<Link> = fork_link.into_iter().collect();

        let cpus = sys::online_cpus().map_err(ProfilerError::CpuList)?;
        let mut event = if opts.force_cpu_clock {
            SamplingEvent::CpuClock
        } else {
            SamplingEvent::Cycles
        };
        let mut events = Vec::with_capacity(cpus.len());
        for &cpu in &cpus {
            let fd = match open_sampling_event(event, cpu, opts.frequency_hz) {
                Ok(fd) => fd,
                Err(e) if event == SamplingEvent::Cycles && events.is_empty() => {
                    tracing::info!(error = %e, "hardware cycles unavailable; using cpu-clock");
                    event = SamplingEvent::CpuClock;
                    open_sampling_event(event, cpu, opts.frequency_hz)
                        .map_err(|source| perf_error(event, cpu, source))?
                }
                Err(source) => return Err(perf_error(event, cpu, source)),
            };
            let link = skel
                .progs
                .on_cpu_sample
                .attach_perf_event(fd.as_raw_fd())
                .map_err(ProfilerError::bpf("attaching to the perf event"))?;
            events.push(fd);
            links.push(link);
        }
        let stats_fd = sys::enable_bpf_run_time_stats()
            .map_err(|e| tracing::debug!(error = %e, "BPF run-time stats unavailable"))
            .ok();
        let ticks = if opts.timeline {
            Some(TickReader {
                ring: RingCollector::start("baton-ticks", &skel.maps.ticks)?,
                pending: Vec::new(),
            })
        } else {
            None
        };
        let p = CpuProfiler {
            dwarf,
            ticks,
            skel,
            _links: links,
            _events: events,
            _stats_fd: stats_fd,
            event,
            frequency_hz: opts.frequency_hz,
            buffers: Buffers::default(),
            stack_lookup_missing: 0,
            last_drain: Instant::now(),
            contexts: ThreadContexts::default(),
        };
        Ok(p)
    }

    /// Decides, from the modules `pid` maps now (`maps` is the text of its `/proc/PID/maps`),
    /// which of its samples BPF copies for DWARF unwinding, and tells BPF. Call it for every
    /// process seen (cheap when its mappings did not change) and again after it execs or loads
    /// libraries. A no-op without DWARF unwinding.
    pub fn plan_unwinding(&mut self, pid: u32, maps: &str) {
        if let Some(d) = &mut self.dwarf {
            plan_pid(
                d,
                &self.skel.maps.dwarf_pids,
                &self.skel.maps.interp_procs,
                pid,
                maps,
            );
        }
    }

    /// The perf event that drives sampling.
    pub fn event(&self) -> SamplingEvent {
        self.event
    }

    pub fn frequency_hz(&self) -> u64 {
        self.frequency_hz
    }

    /// Nanoseconds of CPU time one sample stands for.
    pub fn period_ns(&self) -> u64 {
        1_000_000_000 / self.frequency_hz
    }

    /// Pids in the targeted set (grows as children are followed).
    pub fn target_pids(&self) -> Vec<u32> {
        crate::mechanics::maps::pids_of(&self.skel.maps.targets)
    }

    /// Pids that have samples in the filling buffer, without draining it. Lets the agent
    /// snapshot a process's mappings before the process can exit.
    pub fn pending_pids(&self) -> HashSet<u32> {
        let counts = if self.buffers.active() == 0 {
            &self.skel.maps.counts0
        } else {
            &self.skel.maps.counts1
        };
        counts
            .keys()
            .filter_map(|k| decode::<SampleKey>(&k).ok())
            .map(|k| k.pid)
            .collect()
    }

    /// Cumulative counters.
    pub fn stats(&self) -> ProfilerStats {
        let mut s = ProfilerStats::default();
        for (i, slot) in [
            &mut s.samples,
            &mut s.lost_map_full,
            &mut s.kernel_stack_failed,
            &mut s.user_stack_failed,
            &mut s.idle,
            &mut s.filtered,
            &mut s.forks_followed,
            &mut s.dwarf_copied,
            &mut s.dwarf_ring_full,
            &mut s.dwarf_no_regs,
            &mut s.ticks_lost,
        ]
        .into_iter()
        .enumerate()
        {
            *slot = percpu_sum(&self.skel.maps.stats, i as u32);
        }
        s.stack_lookup_missing = self.stack_lookup_missing;
        s.context = self.contexts.stats(&self.skel.maps.ctx_stats);
        if let Some(d) = &self.dwarf {
            s.unwind = lock(&d.shared.unwinder).stats;
        }
        if let Some(info) = prog_info(self.skel.progs.on_cpu_sample.as_fd().as_raw_fd()) {
            s.prog_run_time_ns = info.run_time_ns;
            s.prog_run_count = info.run_cnt;
            s.prog_misses = info.recursion_misses;
        }
        s
    }

    /// Flips buffers and returns everything aggregated since the last drain.
    pub fn drain(&mut self) -> Result<Window, ProfilerError> {
        let old = flip_buffers!(self.buffers, self.skel);
        let period = self.period_ns();
        let elapsed = self.last_drain.elapsed();
        self.last_drain = Instant::now();

        let (counts, stacks) = if old == 0 {
            (&self.skel.maps.counts0, &self.skel.maps.stacks0)
        } else {
            (&self.skel.maps.counts1, &self.skel.maps.stacks1)
        };
        let keys: Vec<Vec<u8>> = counts.keys().collect();
        let mut stack_reader = StackReader::new(stacks);
        let mut samples = Vec::with_capacity(keys.len());
        let mut by_key: HashMap<(u32, u32, i32, i32), usize> = HashMap::new();
        for raw in keys {
            let Some(count) = counts
                .lookup(&raw, MapFlags::ANY)
                .map_err(ProfilerError::bpf("reading a count"))?
                .and_then(|v| decode::<u64>(&v).ok())
            else {
                continue;
            };
            let _ = counts.delete(&raw);
            let Ok(key) = decode::<SampleKey>(&raw) else {
                continue;
            };
            let kernel = stack_reader.get_weighted(key.kernel_stack, count);
            let user = stack_reader.get_weighted(key.user_stack, count);
            by_key
                .entry((key.pid, key.tid, key.kernel_stack, key.user_stack))
                .or_insert(samples.len());
            samples.push(sample(
                (
                    key.pid,
                    key.tid,
                    key.cgroup_id,
                    comm(&key.comm),
                    kernel,
                    user,
                    key.ctx,
                ),
                count,
                period,
                UserStackOrigin::FramePointers,
                self.contexts.labels(key.ctx, &self.skel.maps.ctx_records),
            ));
        }
        self.stack_lookup_missing += stack_reader.stale;
        // Ticks of the drained buffer name its samples; the others wait for the next drain.
        let mut ticks = Vec::new();
        if let Some(t) = &mut self.ticks {
            let got = t.ring.take();
            let mut keep = Vec::new();
            for tick in t.pending.drain(..).chain(got) {
                if tick.buffer != old {
                    keep.push(tick);
                } else if let Some(&i) =
                    by_key.get(&(tick.pid, tick.tid, tick.kernel_stack, tick.user_stack))
                {
                    ticks.push((tick.ts, i));
                }
            }
            tracing::debug!(
                matched = ticks.len(),
                waiting = keep.len(),
                samples = samples.len(),
                "timeline ticks"
            );
            // A tick whose buffer was drained twice since is stale: keep at most one window.
            keep.retain(|t| t.buffer == self.buffers.active());
            t.pending = keep;
        }
        // Clear the whole idle stack map, including stacks whose count could not be stored.
        crate::mechanics::maps::clear(stacks);
        if let Some(d) = &mut self.dwarf {
            // Copies taken before the flip are in the ring: wait for one more pass over it.
            d.reader.flush_within(Duration::from_millis(500));
            let copied = std::mem::take(&mut *lock(&d.shared.stacks));
            for (key, (count, times)) in copied {
                ticks.extend(times.into_iter().map(|ts| (ts, samples.len())));
                let context = self.contexts.labels(key.6, &self.skel.maps.ctx_records);
                samples.push(sample(key, count, period, UserStackOrigin::Dwarf, context));
            }
            // Forget processes that are gone: their pid may come back as another program.
            let gone: Vec<u32> = d
                .planned
                .iter()
                .copied()
                .filter(|&p| !sys::process_alive(p))
                .collect();
            for pid in gone {
                d.planned.remove(&pid);
                let _ = self.skel.maps.dwarf_pids.delete(&pid.to_ne_bytes());
                crate::interp::forget(pid, Some(&self.skel.maps.interp_procs));
            }
            lock(&d.shared.unwinder).retain(sys::process_alive);
        }
        self.contexts.prune(&self.skel.maps.ctx_procs);
        Ok(Window {
            samples,
            ticks,
            stats: self.stats(),
            elapsed,
        })
    }
}

/// Plans `pid`'s unwinding from its mappings and tells BPF through `dwarf_pids`.
fn plan_pid(
    d: &mut DwarfReader,
    dwarf_pids: &dyn MapCore,
    interp_procs: &dyn MapCore,
    pid: u32,
    maps: &str,
) {
    let plan = lock(&d.shared.unwinder).prepare_maps(pid, maps);
    crate::interp::write_map(interp_procs, pid);
    let key = pid.to_ne_bytes();
    match plan {
        Some(plan) if !plan.is_empty() => {
            if let Err(e) = dwarf_pids.update(&key, &encode_plan(&plan), MapFlags::ANY) {
                tracing::debug!(pid, error = %e, "could not set the unwind plan");
                return;
            }
            d.planned.insert(pid);
        }
        _ => {
            if d.planned.remove(&pid) {
                let _ = dwarf_pids.delete(&key);
            }
        }
    }
}

/// Starts the thread that reads copied stacks from the ring and unwinds them.
fn start_reader(skel: &CpuSkel<'static>, timeline: bool) -> Result<DwarfReader, ProfilerError> {
    let shared = Arc::new(DwarfShared {
        unwinder: Mutex::new(DwarfUnwinder::new()),
        stacks: Mutex::new(HashMap::new()),
        timeline,
    });
    let cb_shared = Arc::clone(&shared);
    // BPF submits without waking us: the reader reads everything every 20 ms.
    let reader = RingReader::start("baton-unwind", &skel.maps.stack_events, move |data| {
        take_copy(&cb_shared, data)
    })?;
    Ok(DwarfReader {
        reader,
        shared,
        planned: HashSet::new(),
    })
}

fn perf_error(event: SamplingEvent, cpu: u32, source: std::io::Error) -> ProfilerError {
    if matches!(
        source.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EPERM)
    ) {
        ProfilerError::Permission
    } else {
        ProfilerError::PerfEventOpen {
            event: event.name(),
            cpu,
            source,
        }
    }
}

fn prog_info(fd: i32) -> Option<libbpf_rs::libbpf_sys::bpf_prog_info> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: `info` is a zeroed bpf_prog_info of `len` bytes with no output buffers requested,
    // so the kernel writes only into it.
    let ret = unsafe {
        libbpf_rs::libbpf_sys::bpf_obj_get_info_by_fd(
            fd,
            (&mut info as *mut libbpf_rs::libbpf_sys::bpf_prog_info).cast(),
            &mut len,
        )
    };
    (ret == 0).then_some(info)
}

/// The registry's constructor.
pub(crate) fn start_dyn(
    o: &crate::StartOptions,
) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    Ok(Box::new(CpuProfiler::start(&CpuOptions {
        frequency_hz: o.frequency_hz,
        targets: o.targets.clone(),
        follow_forks: o.follow_forks,
        force_cpu_clock: o.force_cpu_clock,
        dwarf: o.dwarf,
        timeline: o.option(&INFO, "timeline") != "off",
    })?))
}

impl crate::Profiler for CpuProfiler {
    fn info(&self) -> &'static baton_model::ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<crate::Drained, ProfilerError> {
        let period = self.period_ns();
        let w = CpuProfiler::drain(self)?;
        let spans = w
            .ticks
            .iter()
            .map(|&(ts, i)| crate::RawSpan {
                kind: baton_model::SpanKind::Cpu,
                pid: w.samples[i].event.pid,
                tid: w.samples[i].event.tid,
                start_ns: ts,
                dur_ns: period,
                event: Some(i),
                label: String::new(),
            })
            .collect();
        Ok(crate::Drained {
            events: w.samples.into_iter().map(|r| r.event).collect(),
            histograms: Vec::new(),
            spans,
        })
    }

    fn stats(&self) -> ProfilerStats {
        CpuProfiler::stats(self)
    }

    fn target_pids(&self) -> Vec<u32> {
        CpuProfiler::target_pids(self)
    }

    fn pending_pids(&self) -> HashSet<u32> {
        CpuProfiler::pending_pids(self)
    }

    fn observe_maps(&mut self, pid: u32, maps: &str) {
        self.plan_unwinding(pid, maps);
        self.contexts.observe(pid, maps, &self.skel.maps.ctx_procs);
    }

    fn event_name(&self) -> String {
        self.event.name().to_string()
    }

    fn period_ns(&self) -> u64 {
        CpuProfiler::period_ns(self)
    }

    fn frequency_hz(&self) -> u64 {
        CpuProfiler::frequency_hz(self)
    }

    fn own_frames_on_top(&self) -> bool {
        false
    }
}
