//! The one interface every profiler implements, and what a drain hands back.

use std::collections::{BTreeMap, HashSet};

use baton_model::ProfilerInfo;

use crate::mechanics::unwind::UnwindStats;
use crate::ProfilerError;

/// How any profiler is started. Profiler-specific settings are in `options`, checked against
/// the registry's [`baton_model::OptionInfo`] list and parsed by the profiler.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Only these processes (and, with `follow_forks`, their children); `None` is every process.
    pub targets: Option<Vec<u32>>,
    pub follow_forks: bool,
    /// Sampling frequency, for sampling profilers.
    pub frequency_hz: u64,
    /// CPU profiler: the software clock even where a PMU exists.
    pub force_cpu_clock: bool,
    /// CPU profiler: unwind code without frame pointers from DWARF CFI.
    pub dwarf: bool,
    pub options: BTreeMap<String, String>,
    /// The targets are a forked child that will exec this file: uprobe profilers that probe
    /// "the target's executable" probe it, not the image the child has until then.
    pub pending_exec: Option<std::path::PathBuf>,
    /// Return before a slow attach is done (bpftrace compiles a script for a second or more);
    /// a failed attach is then reported by the first `drain`. `baton up` and `baton agent` set
    /// it, so starting one run never delays another's end; `baton record` waits, so the command
    /// it starts next is watched from its first instruction.
    pub attach_in_background: bool,
}

impl StartOptions {
    /// The option `name`, or the registry's default for it.
    pub fn option<'a>(&'a self, info: &'static ProfilerInfo, name: &str) -> &'a str {
        self.options
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| {
                info.options
                    .iter()
                    .find(|o| o.name == name)
                    .map(|o| o.default)
                    .unwrap_or("")
            })
    }

    /// The option `name` as an integer (`0x` hex allowed), with a clear error.
    pub fn option_u64(
        &self,
        info: &'static ProfilerInfo,
        name: &str,
    ) -> Result<u64, ProfilerError> {
        let v = self.option(info, name).trim();
        let parsed = match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.replace('_', "").parse().ok(),
        };
        parsed.ok_or_else(|| ProfilerError::BadOption {
            profiler: info.name,
            message: format!("option {name} must be a whole number, not {v:?}"),
        })
    }

    /// The option `name` as a duration in nanoseconds (`100us`, `1ms`, `2s`).
    pub fn option_ns(&self, info: &'static ProfilerInfo, name: &str) -> Result<u64, ProfilerError> {
        let v = self.option(info, name);
        baton_model::parse_duration(v)
            .map(|d| d.as_nanos() as u64)
            .map_err(|e| ProfilerError::BadOption {
                profiler: info.name,
                message: format!("option {name}: {e}"),
            })
    }
}

/// One aggregated row of a window, before symbolization: a thread's stacks and what was
/// measured on them.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// Kernel addresses, leaf first.
    pub kernel: Vec<u64>,
    /// User addresses, leaf first.
    pub user: Vec<u64>,
    /// Raw events behind the row (samples, calls, blocks), unweighted.
    pub count: u64,
    /// One value per value type the registry lists for the profiler (missing ones are 0).
    pub values: Vec<u64>,
    /// Inverse of the probability the row's events were recorded.
    pub weight: f64,
    /// Profiler-specific labels (`state`, `syscall`, `op`…), as declared in the registry.
    pub labels: Vec<(&'static str, String)>,
    /// Frames already named by the profiler (bpftrace's), leaf first, after any resolved from
    /// `kernel` and `user`.
    pub frames: Vec<baton_model::Frame>,
    /// Values (bit `i`: value `i`) whose 0 is a reading to store, as an idle GPU's utilisation
    /// is; other zero values are left out.
    pub keep_zero: u64,
    /// Labels the thread published for itself (`endpoint=/checkout`, `trace_id`), decoded
    /// from its thread context (`mechanics::threadctx`).
    pub context: Option<crate::mechanics::threadctx::ContextLabels>,
}

/// A distribution in power-of-two buckets, before labelling.
#[derive(Debug, Clone)]
pub struct RawHistogram {
    pub name: &'static str,
    pub unit: &'static str,
    /// What it is of: a syscall, a function, an operation.
    pub key: String,
    pub pid: u32,
    pub comm: String,
    /// (bucket index: values in `[2^i, 2^(i+1))`, weighted count).
    pub buckets: Vec<(u32, f64)>,
    /// Buckets of any other bounds: (inclusive upper bound, weighted count), e.g. bpftrace's
    /// `lhist()`.
    pub le_buckets: Vec<(u64, f64)>,
}

/// A timed event for the timeline, before labelling: times are `CLOCK_MONOTONIC` nanoseconds,
/// as BPF's `bpf_ktime_get_ns` gives them.
#[derive(Debug, Clone)]
pub struct RawSpan {
    pub kind: baton_model::SpanKind,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub dur_ns: u64,
    /// The drained row (an index into [`Drained::events`]) whose stack this span has.
    pub event: Option<usize>,
    pub label: String,
}

/// What one drain hands back.
#[derive(Debug, Default)]
pub struct Drained {
    pub events: Vec<Event>,
    pub histograms: Vec<RawHistogram>,
    pub spans: Vec<RawSpan>,
}

/// A running profiler. Dropping it detaches everything it attached.
pub trait Profiler {
    fn info(&self) -> &'static ProfilerInfo;
    /// Hands back what was measured since the last drain.
    fn drain(&mut self) -> Result<Drained, ProfilerError>;
    /// Cumulative counters, in the CPU profiler's terms where they apply (`samples` are the
    /// events recorded, `lost_map_full` the ones BPF could not store).
    fn stats(&self) -> ProfilerStats;
    /// Every targeted pid, children followed included; empty when profiling every process.
    fn target_pids(&self) -> Vec<u32>;
    /// Pids with data waiting to be drained, to be snapshotted before they exit.
    fn pending_pids(&self) -> HashSet<u32> {
        HashSet::new()
    }
    /// Called every ~200 ms: adapt sampling, attach to new children, re-read state.
    fn tick(&mut self) {}
    /// A target's `/proc/PID/maps`, whenever it is (re)read.
    fn observe_maps(&mut self, _pid: u32, _maps: &str) {}
    /// What drives it, for summaries: the perf event, tracepoint or probes.
    fn event_name(&self) -> String;
    /// Nanoseconds one sample stands for (sampling profilers), else 0.
    fn period_ns(&self) -> u64 {
        0
    }
    /// Sampling frequency (sampling profilers), else 0.
    fn frequency_hz(&self) -> u64 {
        0
    }
    /// Whether kernel stacks start inside the profiler's own BPF program (tracepoints and
    /// probes do; perf-event samples do not), so the collector drops those frames.
    fn own_frames_on_top(&self) -> bool {
        true
    }
    /// Called once before the last drain of a run: a profiler with output still in flight
    /// (a child process) collects it, so the last drain has everything.
    fn finish(&mut self) {}
    /// How often a run's data should be stored while it runs, for profilers whose windows are
    /// independent (ad-hoc scripts); `None`: once, at the end of the run.
    fn flush_interval(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A profiler's counters, cumulative since start, in the CPU profiler's terms: each profiler
/// fills the ones that apply (`samples` are the events it recorded, `lost_map_full` the ones
/// BPF had no room for).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProfilerStats {
    pub samples: u64,
    pub lost_map_full: u64,
    pub kernel_stack_failed: u64,
    pub user_stack_failed: u64,
    pub idle: u64,
    pub filtered: u64,
    pub forks_followed: u64,
    /// Stack ids recorded by BPF whose stack was no longer in the map at drain time.
    pub stack_lookup_missing: u64,
    /// Times the BPF program could not run (recursion or contention), from the kernel.
    pub prog_misses: u64,
    pub prog_run_time_ns: u64,
    pub prog_run_count: u64,
    /// Samples whose user stack was copied for DWARF unwinding.
    pub dwarf_copied: u64,
    /// Copies that did not fit the ring; those samples used frame pointers.
    pub dwarf_ring_full: u64,
    /// Samples that wanted a copy but had no user registers; frame pointers were used.
    pub dwarf_no_regs: u64,
    /// CPU samples left off the timeline because its ring was full.
    pub ticks_lost: u64,
    /// The DWARF unwinder's counters.
    pub unwind: UnwindStats,
    /// Probe hits in the targets (uprobe and USDT profilers): each one a trap into the kernel
    /// that the target pays for.
    pub traps: u64,
    /// Events a rate limit left out (counted, and stood for by the weight of those kept).
    pub rate_limited: u64,
    /// Thread context read at samples and events, and labels left out or cut.
    pub context: crate::mechanics::threadctx::ContextStats,
}

impl ProfilerStats {
    /// Samples that were taken but are not in any window.
    pub fn lost(&self) -> u64 {
        self.lost_map_full + self.prog_misses
    }
}
