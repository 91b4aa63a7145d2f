//! The overhead guard: keeps the profilers' cost (this process's CPU, less what its API
//! threads spend serving queries and the UI, plus its BPF programs' run time and that of ad-hoc
//! runs' bpftrace processes) under the host's overhead budget. Over it, halve the continuous
//! frequency; at 1 Hz and still over, stop continuous profiling for a while. Each step logs an
//! event and counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_model::sync;
use baton_scheduler::Mode;
use baton_server::api::OverheadStatus;

use super::Driver;
use crate::scheduler_clock as clock;

/// The guard's state.
#[derive(Default)]
pub(super) struct OverheadGuard {
    last: Option<(Instant, f64, u64)>,
    /// CPU of the `baton-api` threads, left out: a user loading large flame graphs is not
    /// profiling overhead, and used to pause continuous profiling.
    api: baton_agent::metrics::ThreadCpu,
    /// And the CPU DuckDB's worker threads spent on the API's queries (ns).
    store_during_api: Arc<AtomicU64>,
    /// The highest frequency the guard allows, once it has acted.
    pub(super) cap: Option<u64>,
    stopped_until: Option<Instant>,
}

/// How long continuous profiling stays off after the guard stops it.
const GUARD_PAUSE: Duration = Duration::from_secs(300);

impl OverheadGuard {
    pub(super) fn new(store_during_api: Arc<AtomicU64>) -> OverheadGuard {
        OverheadGuard {
            store_during_api,
            ..OverheadGuard::default()
        }
    }

    /// Whether the guard stopped continuous profiling for now.
    pub(super) fn paused(&self) -> bool {
        self.stopped_until.is_some()
    }
}

impl Driver {
    /// Measures the overhead every `[host] overhead_check_interval` (30 s by default) and acts.
    pub(super) fn guard_overhead(&mut self) {
        let now = Instant::now();
        if let Some(until) = self.guard.stopped_until {
            if now >= until {
                self.guard.stopped_until = None;
                eprintln!("baton up: overhead guard: resuming continuous profiling");
            }
        }
        // Baton's own CPU (less its API threads', and less what DuckDB's workers spent on
        // the API's queries) and BPF time, plus that of the bpftrace processes of ad-hoc runs.
        let (adhoc_cpu, adhoc_bpf) = baton_profilers::adhoc::children_cost();
        let api = self
            .guard
            .api
            .seconds(baton_agent::metrics::API_THREAD_NAME);
        let store_api = self.guard.store_during_api.load(Ordering::Relaxed) as f64 / 1e9;
        let cpu = baton_agent::metrics::self_cpu_seconds() - api - store_api + adhoc_cpu;
        let bpf = self.metrics.bpf_run_time_ns.load(Ordering::Relaxed) + adhoc_bpf;
        let Some((t0, cpu0, bpf0)) = self.guard.last else {
            self.guard.last = Some((now, cpu, bpf));
            return;
        };
        let limits = self.config().map(|c| c.host).unwrap_or_default();
        let elapsed = now.duration_since(t0).as_secs_f64();
        if elapsed < limits.overhead_check_interval.as_secs_f64().max(1.0) {
            return;
        }
        self.guard.last = Some((now, cpu, bpf));
        let cpus = baton_profilers::sys::online_cpus()
            .map(|c| c.len())
            .unwrap_or(1)
            .max(1) as f64;
        let used = (cpu - cpu0).max(0.0) + bpf.saturating_sub(bpf0) as f64 / 1e9;
        let pct = 100.0 * used / (elapsed * cpus);
        self.metrics
            .overhead_percent_milli
            .store((pct * 1000.0) as u64, Ordering::Relaxed);
        let budget = limits.overhead_budget_percent;
        sync::write(&self.status).overhead = Some(OverheadStatus {
            percent: pct,
            budget_percent: budget,
            frequency_cap_hz: self.guard.cap,
            paused: self.guard.paused(),
            // Left out as the user's, not profiling's: the API threads' CPU and what the
            // store's workers spent on the API's queries, since start.
            api_cpu_seconds: api,
            store_cpu_for_api_seconds: store_api,
        });
        if pct <= budget || self.guard.paused() {
            return;
        }
        let current = self
            .guard
            .cap
            .unwrap_or_else(|| self.highest_continuous_frequency());
        if current > 1 {
            let lower = (current / 2).max(1);
            self.guard.cap = Some(lower);
            self.metrics
                .overhead_throttled
                .fetch_add(1, Ordering::Relaxed);
            eprintln!("baton up: overhead guard: {pct:.2}% of CPU is over the {budget}% budget; lowering the frequency to {lower} Hz");
        } else {
            self.pause_continuous(now);
            eprintln!("baton up: overhead guard: {pct:.2}% is still over the {budget}% budget at 1 Hz; continuous profiling stops for {}s", GUARD_PAUSE.as_secs());
        }
    }

    /// Stops continuous profiling for [`GUARD_PAUSE`]: the host chain and the services'
    /// continuous runs; on-demand and triggered runs go on.
    fn pause_continuous(&mut self, now: Instant) {
        // Counted first, so anyone who sees a run ended by the guard sees the count too.
        self.guard.stopped_until = Some(now + GUARD_PAUSE);
        self.metrics
            .overhead_stopped
            .fetch_add(1, Ordering::Relaxed);
        self.flush_continuous();
        self.continuous = None;
        let running: Vec<u64> = {
            let s = sync::lock(&self.scheduler);
            self.targeted
                .keys()
                .copied()
                .filter(|id| {
                    s.run(*id)
                        .is_some_and(|r| matches!(r.request.mode, Mode::Continuous { .. }))
                })
                .collect()
        };
        for id in running {
            sync::lock(&self.scheduler).end_early(
                id,
                clock(),
                "overhead guard: continuous profiling paused",
            );
            self.stop_targeted(id, true);
        }
    }
}
