//! One profiler of the registry plus the host state needed to turn its raw windows into
//! labelled batches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_model::{Batch, Frame, FrameKind, Histogram, Labels, ProfilerInfo, Span, StackSample};
use baton_profilers::sys::process_alive;
use baton_profilers::{Profiler, ProfilerStats, StartOptions};
use baton_symbolizer::HostSymbolizer;

use crate::cgroups::CgroupResolver;
use crate::k8s::PodDirectory;
use crate::metrics::AgentMetrics;
use crate::AgentError;

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// The registered profiler to run.
    pub profiler: String,
    /// Its targets, rate and options.
    pub start: StartOptions,
    /// Value of the `host` label.
    pub host: String,
    /// Ask the JVMs it samples for their JIT perf maps (`jcmd PID Compiler.perfmap`).
    pub jvm_perf_maps: bool,
    /// The targets are a forked child still waiting to exec: do not look at them until the
    /// first `discover` call (their mappings are this binary's until the exec).
    pub defer_discovery: bool,
    /// Leave native frames of files with a build ID unnamed, for the server to name (fleet
    /// mode's delayed symbolization).
    pub defer_symbols: bool,
    /// The kubelet's pod list, for the names of pods and containers (`--kubelet`).
    pub pods: Option<Arc<PodDirectory>>,
}

/// What one window produced.
#[derive(Debug)]
pub struct WindowReport {
    pub batch: Batch,
    pub stats: ProfilerStats,
    /// Raw events in the window (samples, calls, blocks; unweighted).
    pub sample_count: u64,
}

/// Module name of the placeholder frame for samples whose stacks could not be collected.
pub const NO_STACK_MODULE: &str = "[no stack]";

/// One profiler, whichever it is, plus the host state that turns its raw windows into labelled
/// batches: the symbolizer, cgroup paths, executables.
pub struct Collector {
    profiler: Box<dyn Profiler>,
    symbolizer: HostSymbolizer,
    cgroups: CgroupResolver,
    exes: HashMap<u32, String>,
    host: String,
    jvm: Option<crate::jvm::JvmMaps>,
    pods: Option<Arc<PodDirectory>>,
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` now, in ns: turns BPF's `bpf_ktime_get_ns` times into
/// wall-clock ones.
fn realtime_minus_monotonic_ns() -> i64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    let real = read(libc::CLOCK_REALTIME);
    real - mono
}

impl Collector {
    /// The labels every row and histogram of a process carries.
    fn common_labels(&self, pid: u32, comm: &str) -> Labels {
        let mut labels = Labels::new();
        labels.insert("pid".into(), pid.to_string());
        labels.insert("comm".into(), comm.to_string());
        labels.insert("host".into(), self.host.clone());
        if let Some(exe) = self.exes.get(&pid) {
            labels.insert("exe".into(), exe.clone());
        }
        labels
    }

    pub fn start(opts: &CollectorOptions) -> Result<Collector, AgentError> {
        let profiler = baton_profilers::registry::start(&opts.profiler, &opts.start)?;
        let mut c = Collector {
            profiler,
            symbolizer: HostSymbolizer::new(),
            cgroups: CgroupResolver::default(),
            exes: HashMap::new(),
            host: opts.host.clone(),
            jvm: opts.jvm_perf_maps.then(crate::jvm::JvmMaps::default),
            pods: opts.pods.clone(),
        };
        c.symbolizer.defer_by_build_id = opts.defer_symbols;
        if !opts.defer_discovery {
            c.discover();
        }
        Ok(c)
    }

    /// Lets the profiler collect what is still in flight before the last `collect` of a run.
    pub fn finish(&mut self) {
        self.profiler.finish();
    }

    /// How often a run of this profiler stores its data while it runs (`None`: at its end).
    pub fn flush_interval(&self) -> Option<std::time::Duration> {
        self.profiler.flush_interval()
    }

    /// What the profiler this collector runs declares.
    pub fn info(&self) -> &'static ProfilerInfo {
        self.profiler.info()
    }

    /// What drives the profiler, for summaries: the perf event, the tracepoint or the probes.
    pub fn event_name(&self) -> String {
        self.profiler.event_name()
    }

    /// Nanoseconds one sample stands for (sampling profilers), or 0 where values are measured.
    pub fn period_ns(&self) -> u64 {
        self.profiler.period_ns()
    }

    /// Sampling frequency (sampling profilers), or 0.
    pub fn frequency_hz(&self) -> u64 {
        self.profiler.frequency_hz()
    }

    /// The profiler's counters, in the CPU profiler's terms (see [`Profiler::stats`]).
    pub fn stats(&self) -> ProfilerStats {
        self.profiler.stats()
    }

    fn target_pids(&self) -> Vec<u32> {
        self.profiler.target_pids()
    }

    fn pending_pids(&self) -> HashSet<u32> {
        self.profiler.pending_pids()
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
        self.profiler.tick();
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
        self.profiler.observe_maps(pid, &maps);
    }

    /// Drains the window and turns it into a batch. Updates `metrics` when given.
    pub fn collect(&mut self, metrics: Option<&AgentMetrics>) -> Result<WindowReport, AgentError> {
        let info = self.profiler.info();
        let drained = self.profiler.drain()?;
        let stats = self.profiler.stats();
        let raws = drained.events;
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
        // The batch sample (of the primary value) each drained row became, for its spans.
        let mut first_sample: Vec<Option<u32>> = Vec::with_capacity(raws.len());
        let mut sample_count = 0;
        for raw in &raws {
            sample_count += raw.count;
            first_sample.push(None);
            if raw.values.is_empty() {
                continue;
            }
            let mut stack: Vec<Frame> = self.symbolizer.kernel_frames(&raw.kernel);
            // A tracepoint or probe program's own frames (the BPF program and its trampoline)
            // sit on top of the kernel's: they are the profiler, not the workload.
            if self.profiler.own_frames_on_top() {
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
            stack.extend(raw.frames.iter().cloned());
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
            let mut labels = self.common_labels(raw.pid, &raw.comm);
            labels.insert("tid".into(), raw.tid.to_string());
            if let Some(cg) = self.cgroups.path(raw.cgroup_id) {
                for (k, v) in crate::k8s::labels(&cg, self.pods.as_deref()) {
                    labels.insert(k.into(), v);
                }
                labels.insert("cgroup".into(), cg);
            }
            for (k, v) in &raw.labels {
                labels.insert((*k).to_string(), v.clone());
            }
            // What the thread published about itself never replaces Baton's own labels.
            for (k, v) in raw.context.iter().flat_map(|c| c.iter()) {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let weight = if raw.weight > 0.0 { raw.weight } else { 1.0 };
            let last = raw.values.len().saturating_sub(1);
            for (i, &value) in raw.values.iter().enumerate() {
                // A row with no value of a type is left out, except a zero the profiler read
                // (`keep_zero`) and the primary one of a row that has no value at all (it
                // still counts as a sample).
                let reading = i < 64 && raw.keep_zero & (1 << i) != 0;
                if value == 0 && !reading && !(i == 0 && raw.values.iter().all(|&v| v == 0)) {
                    continue;
                }
                if let Some(slot) = first_sample.last_mut() {
                    slot.get_or_insert(samples.len() as u32);
                }
                samples.push(StackSample {
                    stack: if i == last {
                        std::mem::take(&mut stack)
                    } else {
                        stack.clone()
                    },
                    labels: if i == last {
                        std::mem::take(&mut labels)
                    } else {
                        labels.clone()
                    },
                    value: value as i64,
                    weight,
                    value_index: i as u8,
                });
            }
        }
        let histograms: Vec<Histogram> = drained
            .histograms
            .iter()
            .map(|h| {
                let mut out =
                    Histogram::new(h.name, h.unit, &h.key, self.common_labels(h.pid, &h.comm));
                for &(i, c) in &h.buckets {
                    out.add(baton_model::hist::log2_le(i), c);
                }
                for &(le, c) in &h.le_buckets {
                    out.add(le, c);
                }
                out
            })
            .collect();
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
        let wall_offset_ns = realtime_minus_monotonic_ns();
        let spans = drained
            .spans
            .iter()
            .map(|s| Span {
                kind: s.kind,
                pid: s.pid,
                tid: s.tid,
                start_us: (s.start_ns as i64 + wall_offset_ns) / 1000,
                dur_us: (s.dur_ns / 1000) as i64,
                sample: s.event.and_then(|i| first_sample.get(i).copied().flatten()),
                label: s.label.clone(),
            })
            .collect();
        Ok(WindowReport {
            batch: {
                let mut b = Batch::new(info.name, info.value_types(), baton_model::time::now_ms());
                b.samples = samples;
                b.histograms = histograms;
                b.spans = spans;
                b
            },
            stats,
            sample_count,
        })
    }
}
