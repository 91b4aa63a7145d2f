//! The off-CPU profiler: time threads spend blocked, per stack, from `sched_switch`.
//!
//! A thread that goes to sleep (`TASK_INTERRUPTIBLE` or `TASK_UNINTERRUPTIBLE`) has its stacks
//! taken and the time noted in BPF; when it runs again, the blocked time is added to its key.
//! Blocks shorter than `min_block_ns` are only counted. Taking the stacks at each switch is the
//! cost, so where threads of interest switch out more than `max_tracked_per_sec` times a second,
//! [`OffCpuProfiler::adapt`] has BPF track one switch-out in N, at random, and count its block N
//! times: the overhead stays bounded and the sums unbiased. Counts are double-buffered as in the CPU
//! profiler; the stack map is shared by both buffers and cleared only when it fills (see
//! `offcpu.bpf.c`). User stacks come from frame pointers where the code keeps them; where it
//! does not (per module, as the CPU profiler plans it), a tracked switch-out's user registers and
//! stack are copied into a ring, unwound with DWARF CFI on a reader thread, and paired with the
//! block's end, which BPF then reports through the same ring.

use std::collections::HashMap;
use std::time::Duration;

use libbpf_rs::{Link, MapCore, MapFlags};

use crate::mechanics::copies::CopyReader;
use crate::mechanics::maps::{flip_buffers, percpu_sum, Buffers, RateSampler, RowKey, StackReader};
use crate::mechanics::record::{comm, decode, record};
use crate::mechanics::ring::{ring_bytes, RingCollector};
use crate::mechanics::skel::open_copying;
use crate::mechanics::threadctx::{ContextLabels, ThreadContexts};
use crate::ProfilerError;

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("offcpu");
use skel::{OffcpuSkel, OffcpuSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "offcpu",
    description: "time blocked per stack, from sched_switch (sleeping or uninterruptible)",
    claims: &[Claim {
        resource: "tracepoint:sched:sched_switch",
        shared: Some(4),
    }],
    values: &[
        ValueInfo {
            kind: "offcpu",
            unit: "nanoseconds",
            help: "time blocked",
        },
        ValueInfo {
            kind: "blocks",
            unit: "count",
            help: "blocks at least min_block long",
        },
    ],
    histograms: &[],
    labels: &["state"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "stacks for at most 1,000 switch-outs/s, sampled beyond with weights",
    cost: CostClass::Medium,
    costly_modes: &[],
    options: &[
        OptionInfo {
            name: "min_block",
            default: "1ms",
            help: "shortest block recorded; shorter ones are only counted",
        },
        OptionInfo {
            name: "max_tracked_per_sec",
            default: "1000",
            help: "switch-outs per second whose stacks are taken; beyond, 1 in N at random",
        },
        OptionInfo {
            name: "timeline",
            default: "on",
            help: "on: each recorded block's start and end go to the timeline too",
        },
    ],
};

const STACK_ENTRIES: usize = 16384;
/// Default shortest block recorded.
pub const DEFAULT_MIN_BLOCK_NS: u64 = 1_000_000;

/// How the off-CPU profiler is set up.
#[derive(Debug, Clone)]
pub struct OffCpuOptions {
    /// Only these processes (and, with `follow_forks`, their children); `None` is every process.
    pub targets: Option<Vec<u32>>,
    pub follow_forks: bool,
    /// Blocks shorter than this are counted but not recorded.
    pub min_block_ns: u64,
    /// Most switch-outs per second that get their stacks taken; beyond it they are sampled.
    pub max_tracked_per_sec: u64,
    /// Unwind user code without frame pointers from DWARF CFI (copying the stack).
    pub dwarf: bool,
    /// Send each recorded block's start and length to user space too, for the timeline.
    pub timeline: bool,
}

/// Default budget of tracked switch-outs per second. Taking a switch-out's two stacks cost about
/// 3.5 us here (`bench/offcpu.sh`, BPF run time), so this is about 0.35% of one CPU; the rest of
/// the program costs about 340 ns per switch, tracked or not.
pub const DEFAULT_MAX_TRACKED_PER_SEC: u64 = 1_000;

/// Why a thread was off CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockState {
    /// `TASK_INTERRUPTIBLE`: sleeping, waiting for an event (timers, sockets, futexes).
    Sleeping,
    /// `TASK_UNINTERRUPTIBLE`: usually waiting for disk I/O.
    Uninterruptible,
}

impl BlockState {
    pub fn name(self) -> &'static str {
        match self {
            BlockState::Sleeping => "sleeping",
            BlockState::Uninterruptible => "uninterruptible",
        }
    }
}

/// Blocked time of one (thread, state, stacks), leaf first.
#[derive(Debug, Clone)]
pub struct Block {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    pub state: BlockState,
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
    /// Nanoseconds blocked (sampled blocks count `sample_every` times).
    pub ns: u64,
    /// Blocks added up in `ns` (weighted likewise).
    pub count: u64,
    /// What the thread published about itself when it went to sleep.
    pub context: Option<ContextLabels>,
}

/// A recorded block on the timeline: `CLOCK_MONOTONIC` start and length in ns, and the
/// [`Block`] of the same drain it is counted in, when one is (a block unwound from a copied
/// stack is matched by thread, kernel stack and state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub dur_ns: u64,
    pub state: BlockState,
    pub block: Option<usize>,
}

/// `struct block_value` of offcpu.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct BlockValue {
    ns: u64,
    count: u64,
}
record!(BlockValue, "block_value", 16);

/// `struct span` of offcpu.bpf.c: a recorded block for the timeline, and the key it is counted
/// under in buffer `buffer` (2: a block unwound from a copied stack).
#[repr(C)]
#[derive(Clone, Copy)]
struct Span {
    start: u64,
    dur: u64,
    pid: u32,
    tid: u32,
    kernel_stack: i32,
    user_stack: i32,
    state: u32,
    buffer: u32,
}
record!(Span, "span", 40);

impl BlockState {
    /// The state of a `TASK_*` bit set from BPF.
    fn of(state: u32) -> BlockState {
        if state & 2 != 0 {
            BlockState::Uninterruptible
        } else {
            BlockState::Sleeping
        }
    }
}

struct SpanReader {
    ring: RingCollector<Span>,
    pending: Vec<Span>,
}

/// Counters of the off-CPU profiler, cumulative since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OffProfilerStats {
    pub switches_out: u64,
    pub blocks: u64,
    pub short_blocks: u64,
    pub lost_map_full: u64,
    pub starts_full: u64,
    pub stale_stacks: u64,
    pub kernel_stack_failed: u64,
    pub user_stack_failed: u64,
    /// Times the stack map was cleared because it filled.
    pub stack_map_clears: u64,
    /// Switch-outs not tracked because of sampling.
    pub skipped: u64,
    /// One switch-out in this many is tracked now.
    pub sample_every: u32,
    /// Tracked switch-outs whose user stack was copied for DWARF unwinding.
    pub dwarf_copied: u64,
    /// Copies or block ends the ring had no room for (frame pointers were used), and block
    /// ends whose copy was not found.
    pub dwarf_lost: u64,
}

/// A running off-CPU profiler. Dropping it detaches the program.
pub struct OffCpuProfiler {
    /// First, so the reader thread stops before the ring's map is closed.
    copies: Option<CopyReader>,
    spans: Option<SpanReader>,
    /// The spans of the last drain, until [`OffCpuProfiler::take_spans`].
    last_spans: Vec<BlockSpan>,
    skel: OffcpuSkel<'static>,
    _link: Link,
    _fork_link: Option<Link>,
    _stats_fd: Option<std::os::fd::OwnedFd>,
    buffers: Buffers,
    clears: u64,
    max_tracked_per_sec: u64,
    sampler: RateSampler,
    contexts: ThreadContexts,
}

impl OffCpuProfiler {
    /// Loads the program and attaches it to `sched_switch`.
    pub fn start(opts: &OffCpuOptions) -> Result<OffCpuProfiler, ProfilerError> {
        let (skel, fork_link) = open_copying!(OffcpuSkelBuilder, "offcpu", opts, |open| {
            if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
                ro.min_block_ns = opts.min_block_ns;
                ro.emit_spans = u8::from(opts.timeline);
            }
            // 40-byte spans: the tracked-switch budget for 16 s, at least 256 KiB.
            let span_bytes = opts.max_tracked_per_sec.max(1) * 40 * 16;
            open.maps
                .spans
                .set_max_entries(ring_bytes(opts.timeline, span_bytes, 256 << 10, 32 << 20))
                .map_err(ProfilerError::bpf("sizing the span ring"))?;
        });
        let copies = CopyReader::start(
            "baton-offcpu",
            &skel.maps.copies,
            &skel.maps.dwarf_pids,
            &skel.maps.interp_procs,
            opts.dwarf,
            opts.targets.as_deref(),
        )?;
        crate::mechanics::maps::add_targets(
            &skel.maps.targets,
            opts.targets.as_deref().unwrap_or(&[]),
        )?;
        let link = skel
            .progs
            .on_switch
            .attach()
            .map_err(ProfilerError::bpf("attaching to sched_switch"))?;
        let stats_fd = crate::sys::enable_bpf_run_time_stats()
            .map_err(|e| tracing::debug!(error = %e, "BPF run-time stats unavailable"))
            .ok();
        let spans = if opts.timeline {
            Some(SpanReader {
                ring: RingCollector::start("baton-offspans", &skel.maps.spans)?,
                pending: Vec::new(),
            })
        } else {
            None
        };
        Ok(OffCpuProfiler {
            copies,
            spans,
            last_spans: Vec::new(),
            skel,
            _link: link,
            _fork_link: fork_link,
            _stats_fd: stats_fd,
            buffers: Buffers::default(),
            clears: 0,
            max_tracked_per_sec: opts.max_tracked_per_sec.max(1),
            sampler: RateSampler::new(),
            contexts: ThreadContexts::default(),
        })
    }

    /// The blocks on the timeline from the last drain.
    pub fn take_spans(&mut self) -> Vec<BlockSpan> {
        std::mem::take(&mut self.last_spans)
    }

    /// Sets the sampling of switch-outs from the rate seen since the last call, so that about
    /// `max_tracked_per_sec` are tracked. Call it a few times a second.
    pub fn adapt(&mut self) {
        let seen = self.stats().switches_out;
        let Some(every) = self.sampler.every(seen, self.max_tracked_per_sec) else {
            return;
        };
        // Initialised to 1, the variable lives in .data, not .bss.
        if let Some(data) = self.skel.maps.data_data.as_deref_mut() {
            data.sample_every = every;
        }
    }

    /// Pids in the targeted set (grows as children are followed).
    pub fn target_pids(&self) -> Vec<u32> {
        crate::mechanics::maps::pids_of(&self.skel.maps.targets)
    }

    /// Cumulative counters.
    pub fn stats(&self) -> OffProfilerStats {
        let read = |i: u32| percpu_sum(&self.skel.maps.stats, i);
        let (dwarf_copied, dwarf_lost) = self.copies.as_ref().map_or((0, 0), |c| {
            let (copied, lost, _) = c.stats(&self.skel.maps.copy_stats);
            (copied, lost)
        });
        OffProfilerStats {
            switches_out: read(0),
            blocks: read(1),
            short_blocks: read(2),
            lost_map_full: read(3),
            starts_full: read(4),
            stale_stacks: read(5),
            kernel_stack_failed: read(6),
            user_stack_failed: read(7),
            stack_map_clears: self.clears,
            skipped: read(8),
            dwarf_copied,
            dwarf_lost,
            sample_every: self
                .skel
                .maps
                .data_data
                .as_deref()
                .map_or(1, |d| d.sample_every),
        }
    }

    /// Flips buffers and returns the blocks that ended since the last drain.
    pub fn drain(&mut self) -> Result<Vec<Block>, ProfilerError> {
        self.last_spans.clear();
        let old = flip_buffers!(self.buffers, self.skel);
        let counts = if old == 0 {
            &self.skel.maps.counts0
        } else {
            &self.skel.maps.counts1
        };
        let stacks = &self.skel.maps.stacks;
        let keys: Vec<Vec<u8>> = counts.keys().collect();
        let mut stacks_read = StackReader::new(stacks);
        let mut out = Vec::with_capacity(keys.len());
        let mut by_key: HashMap<(u32, u32, i32, i32, u32), usize> = HashMap::new();
        // Blocks unwound from copies, by what their spans know of them.
        let mut by_copy: HashMap<(u32, u32, i32, u32), usize> = HashMap::new();
        for raw in keys {
            let value = counts
                .lookup(&raw, MapFlags::ANY)
                .map_err(ProfilerError::bpf("reading a block"))?;
            let _ = counts.delete(&raw);
            let (Some(Ok(value)), Ok(key)) = (
                value.map(|v| decode::<BlockValue>(&v)),
                decode::<RowKey>(&raw),
            ) else {
                continue;
            };
            by_key
                .entry((key.pid, key.tid, key.kernel_stack, key.user_stack, key.kind))
                .or_insert(out.len());
            out.push(Block {
                pid: key.pid,
                tid: key.tid,
                cgroup_id: key.cgroup_id,
                kernel: stacks_read.get(key.kernel_stack),
                user: stacks_read.get(key.user_stack),
                state: BlockState::of(key.kind),
                comm: comm(&key.comm),
                ns: value.ns,
                count: value.count,
                context: self.contexts.labels(key.ctx, &self.skel.maps.ctx_records),
            });
        }
        if let Some(c) = &self.copies {
            for (k, sums) in c.take(&self.skel.maps.dwarf_pids) {
                by_copy
                    .entry((k.pid, k.tid, k.kernel_stack, k.what & 3))
                    .or_insert(out.len());
                out.push(Block {
                    pid: k.pid,
                    tid: k.tid,
                    cgroup_id: k.cgroup_id,
                    comm: k.comm,
                    state: BlockState::of(k.what),
                    kernel: stacks_read.get(k.kernel_stack),
                    user: k.user,
                    ns: sums.ns,
                    count: sums.count,
                    context: self.contexts.labels(k.ctx, &self.skel.maps.ctx_records),
                });
            }
        }
        self.contexts.prune(&self.skel.maps.ctx_procs);
        // Spans of the drained buffer (and of copied blocks) name its blocks; the others wait.
        if let Some(sr) = &mut self.spans {
            let got = sr.ring.take();
            let mut keep = Vec::new();
            for sp in sr.pending.drain(..).chain(got) {
                if sp.buffer != old && sp.buffer != 2 {
                    keep.push(sp);
                    continue;
                }
                let (pid, tid, k) = (sp.pid, sp.tid, sp.kernel_stack);
                self.last_spans.push(BlockSpan {
                    pid,
                    tid,
                    start_ns: sp.start,
                    dur_ns: sp.dur,
                    state: BlockState::of(sp.state),
                    block: if sp.buffer == 2 {
                        by_copy.get(&(pid, tid, k, sp.state & 3)).copied()
                    } else {
                        by_key.get(&(pid, tid, k, sp.user_stack, sp.state)).copied()
                    },
                });
            }
            keep.retain(|s| s.buffer == self.buffers.active());
            sr.pending = keep;
        }
        // Sleeping threads keep stack ids across drains, so the stack map is cleared only when
        // it is half full; those threads are then counted without stacks (`stale_stacks`).
        let used = stacks.keys().count();
        if used > STACK_ENTRIES / 2 {
            if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
                bss.generation = bss.generation.wrapping_add(1);
            }
            std::thread::sleep(Duration::from_millis(5));
            crate::mechanics::maps::clear(stacks);
            self.clears += 1;
        }
        Ok(out)
    }
}

/// The registry's constructor.
pub(crate) fn start_dyn(
    o: &crate::StartOptions,
) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    let info = &INFO;
    Ok(Box::new(OffCpuProfiler::start(&OffCpuOptions {
        targets: o.targets.clone(),
        follow_forks: o.follow_forks,
        min_block_ns: o.option_ns(info, "min_block")?,
        max_tracked_per_sec: o.option_u64(info, "max_tracked_per_sec")?,
        dwarf: o.dwarf,
        timeline: o.option(info, "timeline") != "off",
    })?))
}

impl crate::Profiler for OffCpuProfiler {
    fn info(&self) -> &'static baton_model::ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<crate::Drained, ProfilerError> {
        let events = OffCpuProfiler::drain(self)?
            .into_iter()
            .map(|b| crate::Event {
                pid: b.pid,
                tid: b.tid,
                cgroup_id: b.cgroup_id,
                comm: b.comm,
                kernel: b.kernel,
                user: b.user,
                count: b.count,
                values: vec![b.ns, b.count],
                weight: 1.0,
                labels: vec![("state", b.state.name().to_string())],
                frames: Vec::new(),
                keep_zero: 0,
                context: b.context,
            })
            .collect();
        let spans = self
            .take_spans()
            .into_iter()
            .map(|s| crate::RawSpan {
                kind: baton_model::SpanKind::Offcpu,
                pid: s.pid,
                tid: s.tid,
                start_ns: s.start_ns,
                dur_ns: s.dur_ns,
                event: s.block,
                label: s.state.name().to_string(),
            })
            .collect();
        Ok(crate::Drained {
            events,
            histograms: Vec::new(),
            spans,
        })
    }

    /// `samples` are blocks recorded, `lost_map_full` also counts sleeps the start map could
    /// not track, and `stack_lookup_missing` counts blocks whose stacks were cleared while they
    /// slept.
    fn stats(&self) -> crate::ProfilerStats {
        let s = OffCpuProfiler::stats(self);
        crate::ProfilerStats {
            samples: s.blocks,
            lost_map_full: s.lost_map_full + s.starts_full,
            kernel_stack_failed: s.kernel_stack_failed,
            user_stack_failed: s.user_stack_failed,
            stack_lookup_missing: s.stale_stacks,
            dwarf_copied: s.dwarf_copied,
            dwarf_ring_full: s.dwarf_lost,
            unwind: self
                .copies
                .as_ref()
                .map(|c| c.stats(&self.skel.maps.copy_stats).2)
                .unwrap_or_default(),
            context: self.contexts.stats(&self.skel.maps.ctx_stats),
            ..crate::ProfilerStats::default()
        }
    }

    fn target_pids(&self) -> Vec<u32> {
        OffCpuProfiler::target_pids(self)
    }

    fn tick(&mut self) {
        self.adapt();
    }

    /// Plans which of the process's code lacks frame pointers, so BPF copies the user stacks
    /// of switch-outs there (with DWARF unwinding on).
    fn observe_maps(&mut self, pid: u32, maps: &str) {
        if let Some(c) = &self.copies {
            c.observe_maps(&self.skel.maps.dwarf_pids, pid, maps);
        }
        self.contexts.observe(pid, maps, &self.skel.maps.ctx_procs);
    }

    fn event_name(&self) -> String {
        "sched_switch".into()
    }
}
