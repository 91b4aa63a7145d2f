//! The agent's own counters, shared with the HTTP server for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use baton_profilers::ProfilerStats;

/// Counters an agent keeps; all cumulative since start.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub windows: AtomicU64,
    pub samples: AtomicU64,
    pub lost_samples: AtomicU64,
    pub kernel_stack_failures: AtomicU64,
    pub user_stack_failures: AtomicU64,
    pub stack_lookups_missing: AtomicU64,
    pub bpf_run_time_ns: AtomicU64,
    pub bpf_run_count: AtomicU64,
    pub dwarf_copied: AtomicU64,
    pub dwarf_fallbacks: AtomicU64,
    pub dwarf_complete: AtomicU64,
    pub unwind_bytes: AtomicU64,
    pub frames_unknown: AtomicU64,
    pub frames_resolved: AtomicU64,
    /// Frames named from a JIT perf map (also counted in `frames_resolved`).
    pub frames_jit: AtomicU64,
    pub batches_written: AtomicU64,
    pub batch_write_errors: AtomicU64,
    pub sample_rows_written: AtomicU64,
    pub trigger_firings: AtomicU64,
    pub overhead_throttled: AtomicU64,
    pub overhead_stopped: AtomicU64,
    /// Last measured overhead, in thousandths of a percent of host CPU.
    pub overhead_percent_milli: AtomicU64,
    pub batches_downsampled: AtomicU64,
    pub batches_refused_budget: AtomicU64,
    pub rows_dropped_budget: AtomicU64,
    pub trigger_suppressed: AtomicU64,
    /// Prometheus scrapes for triggers that failed (unreachable, bad status, series missing).
    pub trigger_scrape_errors: AtomicU64,
}

impl AgentMetrics {
    /// Replaces the profiler-derived counters with the profiler's cumulative values.
    pub fn set_profiler(&self, s: &ProfilerStats) {
        self.samples.store(s.samples, Ordering::Relaxed);
        self.lost_samples.store(s.lost(), Ordering::Relaxed);
        self.kernel_stack_failures
            .store(s.kernel_stack_failed, Ordering::Relaxed);
        self.user_stack_failures
            .store(s.user_stack_failed, Ordering::Relaxed);
        self.stack_lookups_missing
            .store(s.stack_lookup_missing, Ordering::Relaxed);
        self.bpf_run_time_ns
            .store(s.prog_run_time_ns, Ordering::Relaxed);
        self.bpf_run_count
            .store(s.prog_run_count, Ordering::Relaxed);
        self.dwarf_copied.store(s.dwarf_copied, Ordering::Relaxed);
        self.dwarf_fallbacks
            .store(s.dwarf_ring_full + s.dwarf_no_regs, Ordering::Relaxed);
        self.dwarf_complete
            .store(s.unwind.complete, Ordering::Relaxed);
        self.unwind_bytes
            .store(s.unwind.unwind_bytes, Ordering::Relaxed);
    }

    /// Every series: the counters of [`AgentMetrics::export`], then the interpreter unwinder's,
    /// with one series per process whose interpreter frames are left out, labelled with why.
    pub fn lines(&self) -> Vec<baton_model::prom::Line> {
        use baton_model::prom::label_value;
        let mut out: Vec<baton_model::prom::Line> = self
            .export()
            .into_iter()
            .map(|(n, h, k, v)| (n.into(), h, k, v))
            .collect();
        let s = baton_profilers::interp::stats();
        out.extend([
            (
                "baton_interp_stacks_total".into(),
                "Stacks with interpreter (Python) frames merged in.",
                "counter",
                s.stacks as f64,
            ),
            (
                "baton_interp_frames_total".into(),
                "Interpreter frames named.",
                "counter",
                s.frames as f64,
            ),
            (
                "baton_interp_unreadable_total".into(),
                "Stacks left native because their interpreter frames could not be read.",
                "counter",
                s.failed as f64,
            ),
        ]);
        for f in baton_profilers::interp::fallbacks() {
            out.push((
                format!(
                    "baton_interp_fallback_stacks{{pid=\"{}\",comm=\"{}\",reason=\"{}\"}}",
                    f.pid,
                    label_value(&f.comm),
                    label_value(&f.reason)
                )
                .into(),
                "One series per process whose interpreter frames are left out, labelled with \
                 why; the value counts its stacks left native after a failed read (0 for an \
                 unsupported version, whose stacks are all native).",
                "gauge",
                f.samples as f64,
            ));
        }
        out
    }

    /// `(name, help, kind, value)` for each counter, in Prometheus naming.
    pub fn export(&self) -> Vec<(&'static str, &'static str, &'static str, f64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        vec![
            (
                "baton_windows_total",
                "Profiling windows drained.",
                "counter",
                g(&self.windows),
            ),
            (
                "baton_samples_total",
                "CPU samples taken by the BPF program.",
                "counter",
                g(&self.samples),
            ),
            (
                "baton_lost_samples_total",
                "Samples taken but not recorded (map full or program missed).",
                "counter",
                g(&self.lost_samples),
            ),
            (
                "baton_kernel_stack_failures_total",
                "Samples whose kernel stack could not be collected.",
                "counter",
                g(&self.kernel_stack_failures),
            ),
            (
                "baton_user_stack_failures_total",
                "Samples whose user stack could not be collected.",
                "counter",
                g(&self.user_stack_failures),
            ),
            (
                "baton_stack_lookups_missing_total",
                "Samples whose stack id was gone from the stack map at drain time.",
                "counter",
                g(&self.stack_lookups_missing),
            ),
            (
                "baton_dwarf_stacks_copied_total",
                "Samples whose user stack was copied for DWARF unwinding (code without frame \
                 pointers).",
                "counter",
                g(&self.dwarf_copied),
            ),
            (
                "baton_dwarf_fallbacks_total",
                "Samples that wanted a DWARF copy but fell back to frame pointers (ring full, no \
                 user registers).",
                "counter",
                g(&self.dwarf_fallbacks),
            ),
            (
                "baton_dwarf_stacks_complete_total",
                "Copied stacks unwound to a frame whose CFI marks the outermost one.",
                "counter",
                g(&self.dwarf_complete),
            ),
            (
                "baton_unwind_table_bytes",
                "Bytes of .eh_frame/.eh_frame_hdr held for DWARF unwinding.",
                "gauge",
                g(&self.unwind_bytes),
            ),
            (
                "baton_bpf_run_time_seconds_total",
                "Run time of Baton's BPF programs (kernel bpf stats).",
                "counter",
                g(&self.bpf_run_time_ns) / 1e9,
            ),
            (
                "baton_bpf_run_count_total",
                "Runs of Baton's BPF programs.",
                "counter",
                g(&self.bpf_run_count),
            ),
            (
                "baton_frames_resolved_total",
                "Frames symbolized on this host.",
                "counter",
                g(&self.frames_resolved),
            ),
            (
                "baton_frames_jit_total",
                "User frames named from a JIT perf map (also counted as resolved).",
                "counter",
                g(&self.frames_jit),
            ),
            (
                "baton_frames_unknown_total",
                "Frames left as module+offset.",
                "counter",
                g(&self.frames_unknown),
            ),
            (
                "baton_batches_written_total",
                "Batches written to the store.",
                "counter",
                g(&self.batches_written),
            ),
            (
                "baton_batch_write_errors_total",
                "Batches the store refused.",
                "counter",
                g(&self.batch_write_errors),
            ),
            (
                "baton_sample_rows_written_total",
                "Sample rows written to the store.",
                "counter",
                g(&self.sample_rows_written),
            ),
            (
                "baton_write_budget_downsampled_batches_total",
                "Batches over their write budget, down-sampled with raised weights.",
                "counter",
                g(&self.batches_downsampled),
            ),
            (
                "baton_write_budget_refused_batches_total",
                "Batches refused because their write budget was empty.",
                "counter",
                g(&self.batches_refused_budget),
            ),
            (
                "baton_write_budget_dropped_rows_total",
                "Sample rows not stored because of write budgets.",
                "counter",
                g(&self.rows_dropped_budget),
            ),
            (
                "baton_overhead_percent",
                "Last measured cost of profiling (own CPU + BPF run time), in percent of host CPU.",
                "gauge",
                g(&self.overhead_percent_milli) / 1000.0,
            ),
            (
                "baton_overhead_throttled_total",
                "Times the overhead guard lowered the continuous frequency.",
                "counter",
                g(&self.overhead_throttled),
            ),
            (
                "baton_overhead_stopped_total",
                "Times the overhead guard stopped continuous profiling.",
                "counter",
                g(&self.overhead_stopped),
            ),
            (
                "baton_trigger_firings_total",
                "Runs started by triggers.",
                "counter",
                g(&self.trigger_firings),
            ),
            (
                "baton_trigger_suppressed_total",
                "Trigger conditions held back by a cooldown or the hourly cap.",
                "counter",
                g(&self.trigger_suppressed),
            ),
            (
                "baton_trigger_scrape_errors_total",
                "Prometheus scrapes for triggers that failed or lacked the series.",
                "counter",
                g(&self.trigger_scrape_errors),
            ),
            (
                "baton_bpf_bad_records_total",
                "Records from BPF dropped because their size did not match their struct.",
                "counter",
                baton_profilers::bad_records() as f64,
            ),
            (
                "baton_agent_cpu_seconds_total",
                "CPU time used by the baton process itself.",
                "counter",
                self_cpu_seconds(),
            ),
            (
                "baton_agent_resident_bytes",
                "Resident memory of the baton process.",
                "gauge",
                self_rss_bytes(),
            ),
        ]
    }
}

/// User + system CPU seconds of this process, from `/proc/self/stat`.
pub fn self_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| crate::observe::stat_ticks(&stat))
        .map_or(0.0, |t| t as f64 / crate::observe::clk_tck())
}

/// The name `baton up` gives its HTTP runtime's threads (workers and blocking pool): what they
/// spend serving the API and the UI is not profiling overhead.
pub const API_THREAD_NAME: &str = "baton-api";

/// CPU seconds spent by this process's threads of one name, summed across calls: a thread that
/// exits between two calls keeps what it had used at the earlier one (tokio's blocking threads
/// come and go).
#[derive(Debug, Default)]
pub struct ThreadCpu {
    last: std::collections::HashMap<u32, f64>,
    total: f64,
}

impl ThreadCpu {
    /// The total so far for threads whose name (`comm`) is `name`.
    pub fn seconds(&mut self, name: &str) -> f64 {
        let hz = crate::observe::clk_tck();
        let mut seen = std::collections::HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return self.total;
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            if &stat[open + 1..close] != name {
                continue;
            }
            let Some(ticks) = crate::observe::stat_ticks(&stat) else {
                continue;
            };
            let cpu = ticks as f64 / hz;
            self.total += (cpu - self.last.get(&tid).copied().unwrap_or(0.0)).max(0.0);
            seen.insert(tid, cpu);
        }
        self.last = seen;
        self.total
    }
}

/// The ids of this process's threads now.
pub fn thread_ids() -> std::collections::HashSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|t| t.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time of one thread of this process, in ns, from its own CPU clock (precise, unlike the
/// clock ticks of `/proc`); 0 once it has exited.
pub fn thread_cpu_ns(tid: u32) -> u64 {
    // The kernel's per-thread scheduler clock id: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
    let clock = (!(tid as libc::clockid_t) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Resident set size of this process in bytes.
pub fn self_rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU clock, as it reads it itself.
    fn own_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Burns this thread's CPU until its own clock has advanced `ns`.
    fn burn(ns: u64) {
        let start = own_cpu_ns();
        let mut x = 1u64;
        while own_cpu_ns() - start < ns {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
            }
        }
    }

    /// Another thread's clock, read by id, lies between what that thread read of its own clock
    /// before and after: no assumption on how fast anything runs.
    #[test]
    fn a_threads_cpu_clock_is_read_by_its_id() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            burn(20_000_000);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            tx.send((tid, own_cpu_ns())).expect("send");
            go_rx.recv().expect("recv");
            own_cpu_ns()
        });
        let (tid, before) = rx.recv().expect("tid");
        assert!(thread_ids().contains(&tid));
        let read = thread_cpu_ns(tid);
        go_tx.send(()).expect("send");
        let after = h.join().expect("join");
        assert!(
            (before..=after).contains(&read),
            "read {read} ns, the thread saw {before} then {after}"
        );
        assert!(before >= 20_000_000);
        // This thread's own, the same way.
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        let (a, r, b) = (own_cpu_ns(), thread_cpu_ns(me), own_cpu_ns());
        assert!((a..=b).contains(&r), "{a} <= {r} <= {b}");
    }

    /// A named thread's CPU from `/proc` ticks (utime + stime, which the kernel scales to the
    /// thread's precise runtime and then truncates, each, to whole ticks) is at most two ticks
    /// under its own clock and never over it; and it is kept once the thread exits.
    #[test]
    fn thread_cpu_keeps_what_an_exited_thread_used() {
        let mut t = ThreadCpu::default();
        assert_eq!(t.seconds("baton-t-burn"), 0.0);
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::Builder::new()
            .name("baton-t-burn".into())
            .spawn(move || {
                burn(100_000_000);
                tx.send(own_cpu_ns()).ok();
                go_rx.recv().ok();
                own_cpu_ns()
            })
            .expect("spawn");
        let before = rx.recv().expect("burned") as f64 / 1e9;
        let during = t.seconds("baton-t-burn");
        go_tx.send(()).expect("send");
        let after = h.join().expect("join") as f64 / 1e9;
        let tick = 1.0 / crate::observe::clk_tck();
        assert!(
            during >= before - 2.0 * tick - 1e-9 && during <= after + 1e-9,
            "read {during} s, the thread saw {before} then {after} s (a tick is {tick} s)"
        );
        let gone = t.seconds("baton-t-burn");
        assert_eq!(gone, during, "the exited thread's time is kept");
        assert_eq!(t.seconds("no-such-thread"), during);
    }
}
