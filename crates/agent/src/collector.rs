//! One stack profiler (CPU or off-CPU) plus the host state needed to turn its raw windows into
//! labelled batches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_model::{Batch, Frame, FrameKind, Labels, StackSample, ValueType};
use baton_profilers::offcpu::{OffCpuOptions, OffCpuProfiler};
use baton_profilers::sys::process_alive;
use baton_profilers::{CpuOptions, CpuProfiler, CpuStats, ProfilerKind};
use baton_symbolizer::HostSymbolizer;

use crate::cgroups::CgroupResolver;
use crate::metrics::AgentMetrics;
use crate::AgentError;

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// Which profiler: `cpu` uses `cpu`'s options; `offcpu` uses `cpu.targets` and
    /// `offcpu_min_block_ns`.
    pub profiler: ProfilerKind,
    pub cpu: CpuOptions,
    /// Shortest block the off-CPU profiler records.
    pub offcpu_min_block_ns: u64,
    /// Value of the `host` label.
    pub host: String,
    /// Ask the JVMs it samples for their JIT perf maps (`jcmd PID Compiler.perfmap`).
    pub jvm_perf_maps: bool,
    /// The targets are a forked child still waiting to exec: do not look at them until the
    /// first `discover` call (their mappings are this binary's until the exec).
    pub defer_discovery: bool,
}

/// What one window produced.
#[derive(Debug)]
pub struct WindowReport {
    pub batch: Batch,
    pub stats: CpuStats,
    /// Raw samples in the window (unweighted count).
    pub sample_count: u64,
}

/// Module name of the placeholder frame for samples whose stacks could not be collected.
pub const NO_STACK_MODULE: &str = "[no stack]";

/// The profiler a collector drains.
enum Source {
    Cpu(CpuProfiler),
    OffCpu(OffCpuProfiler),
}

/// One sample as a profiler gave it, before symbolization.
struct Raw {
    pid: u32,
    tid: u32,
    cgroup_id: u64,
    comm: String,
    kernel: Vec<u64>,
    user: Vec<u64>,
    count: u64,
    value: u64,
    state: Option<&'static str>,
}

pub struct CpuCollector {
    profiler: Source,
    symbolizer: HostSymbolizer,
    cgroups: CgroupResolver,
    exes: HashMap<u32, String>,
    host: String,
    jvm: Option<crate::jvm::JvmMaps>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl CpuCollector {
    pub fn start(opts: &CollectorOptions) -> Result<CpuCollector, AgentError> {
        let profiler = match opts.profiler {
            ProfilerKind::Cpu => Source::Cpu(CpuProfiler::start(&opts.cpu)?),
            ProfilerKind::OffCpu => {
                let o = OffCpuOptions {
                    targets: opts.cpu.targets.clone(),
                    follow_forks: opts.cpu.follow_forks,
                    min_block_ns: opts.offcpu_min_block_ns,
                    max_tracked_per_sec: baton_profilers::offcpu::DEFAULT_MAX_TRACKED_PER_SEC,
                };
                Source::OffCpu(OffCpuProfiler::start(&o)?)
            }
        };
        let mut c = CpuCollector {
            profiler,
            symbolizer: HostSymbolizer::new(),
            cgroups: CgroupResolver::default(),
            exes: HashMap::new(),
            host: opts.host.clone(),
            jvm: opts.jvm_perf_maps.then(crate::jvm::JvmMaps::default),
        };
        if !opts.defer_discovery {
            c.discover();
        }
        Ok(c)
    }

    /// The profiler this collector runs.
    pub fn kind(&self) -> ProfilerKind {
        match self.profiler {
            Source::Cpu(_) => ProfilerKind::Cpu,
            Source::OffCpu(_) => ProfilerKind::OffCpu,
        }
    }

    /// What drives the profiler, for summaries: the perf event, or the tracepoint.
    pub fn event_name(&self) -> &'static str {
        match &self.profiler {
            Source::Cpu(p) => p.event().name(),
            Source::OffCpu(_) => "sched_switch",
        }
    }

    /// Nanoseconds one sample stands for (CPU), or 0 where values are measured (off-CPU).
    pub fn period_ns(&self) -> u64 {
        match &self.profiler {
            Source::Cpu(p) => p.period_ns(),
            Source::OffCpu(_) => 0,
        }
    }

    /// Sampling frequency (CPU), or 0.
    pub fn frequency_hz(&self) -> u64 {
        match &self.profiler {
            Source::Cpu(p) => p.frequency_hz(),
            Source::OffCpu(_) => 0,
        }
    }

    /// The counters, in the CPU profiler's terms: for off-CPU, `samples` are blocks recorded,
    /// `lost_map_full` also counts sleeps the start map could not track, and
    /// `stack_lookup_missing` counts blocks whose stacks were cleared while they slept.
    pub fn stats(&self) -> CpuStats {
        match &self.profiler {
            Source::Cpu(p) => p.stats(),
            Source::OffCpu(p) => {
                let s = p.stats();
                CpuStats {
                    samples: s.blocks,
                    lost_map_full: s.lost_map_full + s.starts_full,
                    kernel_stack_failed: s.kernel_stack_failed,
                    user_stack_failed: s.user_stack_failed,
                    stack_lookup_missing: s.stale_stacks,
                    ..CpuStats::default()
                }
            }
        }
    }

    fn target_pids(&self) -> Vec<u32> {
        match &self.profiler {
            Source::Cpu(p) => p.target_pids(),
            Source::OffCpu(p) => p.target_pids(),
        }
    }

    fn pending_pids(&self) -> HashSet<u32> {
        match &self.profiler {
            Source::Cpu(p) => p.pending_pids(),
            Source::OffCpu(_) => HashSet::new(),
        }
    }

    /// Targeted pids that are still alive (all targets, children included).
    pub fn live_targets(&self) -> Vec<u32> {
        self.target_pids()
            .into_iter()
            .filter(|&p| process_alive(p))
            .collect()
    }

    /// Snapshots processes that have samples pending but no snapshot yet, so their frames can be
    /// resolved even if they exit before the window ends. Call it often (every ~250 ms).
    pub fn discover(&mut self) {
        if let Source::OffCpu(p) = &mut self.profiler {
            p.adapt();
        }
        let mut pids: HashSet<u32> = self.pending_pids();
        let targets = self.target_pids();
        // Targets are few: re-read their mappings each time, so the libraries their loader maps
        // after the exec are known (and planned for) even if the process exits before the end
        // of the window.
        for &pid in &targets {
            if self.symbolizer.knows(pid) {
                self.observe(pid);
            }
        }
        pids.extend(targets);
        for pid in pids {
            // A pid whose executable changed has exec'd since its snapshot: take a new one.
            let exe = crate::targets::exe_of(pid);
            if let (Some(jvm), Some(exe)) = (&mut self.jvm, &exe) {
                if crate::jvm::is_jvm(exe) {
                    jvm.request(pid, exe);
                }
            }
            if !self.symbolizer.knows(pid) || (exe.is_some() && exe.as_ref() != self.exes.get(&pid))
            {
                self.observe(pid);
                // A short-lived JIT process may be gone (with its map) by the end of the window.
                self.symbolizer.refresh_perf_map(pid);
            }
        }
    }

    /// Reads `/proc/PID/maps` once for both the symbolizer's snapshot and the unwinding plan
    /// (which of the process's code lacks frame pointers, so BPF copies those samples' stacks;
    /// cheap when nothing changed).
    fn observe(&mut self, pid: u32) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        if self.symbolizer.observe_maps(pid, &maps) {
            if let Some(exe) = crate::targets::exe_of(pid) {
                self.exes.insert(pid, exe);
            }
        }
        if let Source::Cpu(p) = &mut self.profiler {
            p.plan_unwinding(pid, &maps);
        }
    }

    /// Drains the window and turns it into a batch. Updates `metrics` when given.
    pub fn collect(&mut self, metrics: Option<&AgentMetrics>) -> Result<WindowReport, AgentError> {
        let (raws, stats, value_type, profiler) = match &mut self.profiler {
            Source::Cpu(p) => {
                let period = p.period_ns();
                let w = p.drain()?;
                let raws: Vec<Raw> = w
                    .samples
                    .into_iter()
                    .map(|r| Raw {
                        pid: r.pid,
                        tid: r.tid,
                        cgroup_id: r.cgroup_id,
                        comm: r.comm,
                        kernel: r.kernel,
                        user: r.user,
                        count: r.count,
                        value: r.count * period,
                        state: None,
                    })
                    .collect();
                (raws, w.stats, ValueType::cpu_nanoseconds(), "cpu")
            }
            Source::OffCpu(p) => {
                let blocks = p.drain()?;
                let raws: Vec<Raw> = blocks
                    .into_iter()
                    .map(|b| Raw {
                        pid: b.pid,
                        tid: b.tid,
                        cgroup_id: b.cgroup_id,
                        comm: b.comm,
                        kernel: b.kernel,
                        user: b.user,
                        count: b.count,
                        value: b.ns,
                        state: Some(b.state.name()),
                    })
                    .collect();
                (
                    raws,
                    self.stats(),
                    ValueType::offcpu_nanoseconds(),
                    "offcpu",
                )
            }
        };
        if let Some(jvm) = &mut self.jvm {
            // Maps asked for during the window should be on disk before it is symbolized.
            jvm.settle(std::time::Duration::from_secs(2));
        }
        // Refresh snapshots of live processes in this window: it catches dlopen'ed libraries.
        let window_pids: HashSet<u32> = raws.iter().map(|s| s.pid).collect();
        for &pid in &window_pids {
            if pid != 0 && process_alive(pid) {
                // Also re-plans unwinding: a library loaded since may lack frame pointers.
                self.observe(pid);
            }
            // JIT runtimes append to their perf map as they compile: read it now.
            if pid != 0 {
                self.symbolizer.refresh_perf_map(pid);
            }
        }
        let mut samples = Vec::with_capacity(raws.len());
        let mut sample_count = 0;
        for raw in &raws {
            sample_count += raw.count;
            let mut stack: Vec<Frame> = self.symbolizer.kernel_frames(&raw.kernel);
            // The off-CPU program's own frames (the BPF program and its trampoline) sit on top
            // of the scheduler's: they are the profiler, not the workload.
            if profiler == "offcpu" {
                let own = stack
                    .iter()
                    .take_while(|f| {
                        f.function.as_deref().is_some_and(|n| {
                            n.starts_with("bpf_prog_")
                                || n.starts_with("bpf_trace_run")
                                || n.starts_with("__bpf_trace_")
                        })
                    })
                    .count();
                stack.drain(..own);
            }
            stack.extend(self.symbolizer.user_frames(raw.pid, &raw.user));
            if stack.is_empty() {
                stack.push(Frame {
                    kind: FrameKind::User,
                    function: Some(format!("[no stack] {}", raw.comm)),
                    module: NO_STACK_MODULE.to_string(),
                    build_id: None,
                    address: 0,
                    file: None,
                    line: None,
                });
            }
            let mut labels = Labels::new();
            labels.insert("pid".into(), raw.pid.to_string());
            labels.insert("tid".into(), raw.tid.to_string());
            labels.insert("comm".into(), raw.comm.clone());
            labels.insert("host".into(), self.host.clone());
            if let Some(exe) = self.exes.get(&raw.pid) {
                labels.insert("exe".into(), exe.clone());
            }
            if let Some(cg) = self.cgroups.path(raw.cgroup_id) {
                labels.insert("cgroup".into(), cg);
            }
            if let Some(state) = raw.state {
                labels.insert("state".into(), state.to_string());
            }
            samples.push(StackSample {
                stack,
                labels,
                value: raw.value as i64,
                weight: 1.0,
            });
        }
        // Forget processes that are gone and had nothing in this window.
        for pid in self.symbolizer.known_pids() {
            if !window_pids.contains(&pid) && !process_alive(pid) {
                self.symbolizer.forget_process(pid);
                self.exes.remove(&pid);
            }
        }
        self.symbolizer.trim();
        if let Some(m) = metrics {
            m.windows.fetch_add(1, Ordering::Relaxed);
            m.set_profiler(&stats);
            m.frames_resolved
                .store(self.symbolizer.stats.frames_resolved, Ordering::Relaxed);
            m.frames_unknown
                .store(self.symbolizer.stats.frames_unknown, Ordering::Relaxed);
            m.frames_jit
                .store(self.symbolizer.stats.frames_jit, Ordering::Relaxed);
        }
        Ok(WindowReport {
            batch: Batch {
                profiler: profiler.into(),
                value_type,
                ts_ms: now_ms(),
                samples,
            },
            stats,
            sample_count,
        })
    }
}
