//! One CPU profiler plus the host state needed to turn its raw windows into labelled batches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_model::{Batch, Frame, FrameKind, Labels, StackSample, ValueType};
use baton_profilers::sys::process_alive;
use baton_profilers::{CpuOptions, CpuProfiler, CpuStats, SamplingEvent};
use baton_symbolizer::HostSymbolizer;

use crate::cgroups::CgroupResolver;
use crate::metrics::AgentMetrics;
use crate::AgentError;

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    pub cpu: CpuOptions,
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

pub struct CpuCollector {
    profiler: CpuProfiler,
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
        let profiler = CpuProfiler::start(&opts.cpu)?;
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

    pub fn event(&self) -> SamplingEvent {
        self.profiler.event()
    }

    pub fn period_ns(&self) -> u64 {
        self.profiler.period_ns()
    }

    pub fn frequency_hz(&self) -> u64 {
        self.profiler.frequency_hz()
    }

    pub fn stats(&self) -> CpuStats {
        self.profiler.stats()
    }

    /// Targeted pids that are still alive (all targets, children included).
    pub fn live_targets(&self) -> Vec<u32> {
        self.profiler
            .target_pids()
            .into_iter()
            .filter(|&p| process_alive(p))
            .collect()
    }

    /// Snapshots processes that have samples pending but no snapshot yet, so their frames can be
    /// resolved even if they exit before the window ends. Call it often (every ~250 ms).
    pub fn discover(&mut self) {
        let mut pids: HashSet<u32> = self.profiler.pending_pids();
        let targets = self.profiler.target_pids();
        // Targets are few: re-read their mappings each time, so the libraries their loader maps
        // after the exec are known (and planned for) even if the process exits before the end
        // of the window.
        for &pid in &targets {
            if self.symbolizer.knows(pid) {
                self.observe(pid);
                self.profiler.plan_unwinding(pid);
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
                // Which of its code lacks frame pointers, so BPF copies those samples' stacks.
                self.profiler.plan_unwinding(pid);
                // A short-lived JIT process may be gone (with its map) by the end of the window.
                self.symbolizer.refresh_perf_map(pid);
            }
        }
    }

    fn observe(&mut self, pid: u32) {
        if self.symbolizer.observe_process(pid) {
            if let Some(exe) = crate::targets::exe_of(pid) {
                self.exes.insert(pid, exe);
            }
        }
    }

    /// Drains the window and turns it into a batch. Updates `metrics` when given.
    pub fn collect(&mut self, metrics: Option<&AgentMetrics>) -> Result<WindowReport, AgentError> {
        let window = self.profiler.drain()?;
        if let Some(jvm) = &mut self.jvm {
            // Maps asked for during the window should be on disk before it is symbolized.
            jvm.settle(std::time::Duration::from_secs(2));
        }
        let period = self.profiler.period_ns();
        // Refresh snapshots of live processes in this window: it catches dlopen'ed libraries.
        let window_pids: HashSet<u32> = window.samples.iter().map(|s| s.pid).collect();
        for &pid in &window_pids {
            if pid != 0 && process_alive(pid) {
                self.observe(pid);
                // A library loaded since may lack frame pointers (cheap when nothing changed).
                self.profiler.plan_unwinding(pid);
            }
            // JIT runtimes append to their perf map as they compile: read it now.
            if pid != 0 {
                self.symbolizer.refresh_perf_map(pid);
            }
        }
        let mut samples = Vec::with_capacity(window.samples.len());
        let mut sample_count = 0;
        for raw in &window.samples {
            sample_count += raw.count;
            let mut stack: Vec<Frame> = self.symbolizer.kernel_frames(&raw.kernel);
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
            samples.push(StackSample {
                stack,
                labels,
                value: (raw.count * period) as i64,
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
            m.set_profiler(&window.stats);
            m.frames_resolved
                .store(self.symbolizer.stats.frames_resolved, Ordering::Relaxed);
            m.frames_unknown
                .store(self.symbolizer.stats.frames_unknown, Ordering::Relaxed);
            m.frames_jit
                .store(self.symbolizer.stats.frames_jit, Ordering::Relaxed);
        }
        Ok(WindowReport {
            batch: Batch {
                profiler: "cpu".into(),
                value_type: ValueType::cpu_nanoseconds(),
                ts_ms: now_ms(),
                samples,
            },
            stats: window.stats,
            sample_count,
        })
    }
}
