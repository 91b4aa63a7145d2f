//! The driver's loop: one pass asks the scheduler what to start and stop, carries it out, draws
//! the continuous rules, tunes, evaluates triggers, guards the overhead, discovers processes and
//! stores the windows of runs that flush while they run; then it naps until the next pass.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton_agent::Collector;
use baton_model::sync;
use baton_scheduler::continuous::{slot_rules, SlotRule};
use baton_scheduler::{Decision, JobRequest, Mode, RunState};

use super::{continuous::is_host_chain, window_for, Driver, HOST_CHAIN, LOCAL_HOST};
use crate::scheduler_clock as clock;
use crate::stop::stop_requested;

/// The phases of one pass of the driver loop, timed. A run due to end waits for the pass in
/// progress, so a long pass is logged with what took the time.
struct PassTimer {
    began: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

/// A pass longer than this is logged.
const SLOW_PASS: Duration = Duration::from_millis(750);

impl PassTimer {
    fn start() -> PassTimer {
        let now = Instant::now();
        PassTimer {
            began: now,
            last: now,
            phases: Vec::new(),
        }
    }

    /// Ends the phase `name`.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }

    fn report(&self) {
        let total = self.began.elapsed();
        if total < SLOW_PASS {
            return;
        }
        let parts: Vec<String> = self
            .phases
            .iter()
            .filter(|(_, d)| *d >= Duration::from_millis(50))
            .map(|(n, d)| format!("{n} {} ms", d.as_millis()))
            .collect();
        tracing::warn!(
            "a collector pass took {} ms ({}): runs due to end waited for it",
            total.as_millis(),
            parts.join(", ")
        );
    }
}

impl Driver {
    /// Runs passes until a stop is asked for, then stores every window and ends every run.
    pub(super) fn run(&mut self) {
        let mut last_prune = Instant::now();
        while !stop_requested() {
            let mut pass = PassTimer::start();
            let now = clock();
            let config = self.config();
            let rules: Vec<SlotRule> = config
                .as_ref()
                .map(slot_rules)
                .unwrap_or_default()
                .into_iter()
                .collect();
            // CPU rules replace whole-host CPU profiling; rules of other profilers run beside it.
            let by_services = rules.iter().any(|r| r.profiler == "cpu");
            let decisions = self.decide(by_services, config.as_ref(), now, &mut last_prune);
            pass.mark("scheduler");
            // A whole-host window that ends is followed at once by the next, without the nap.
            let window_ended = !by_services
                && decisions
                    .iter()
                    .any(|d| matches!(d, Decision::Stop { run, .. } if self.is_host_chain(*run)));
            for d in decisions {
                self.apply(d, now);
            }
            pass.mark("starting and stopping runs");
            if by_services && self.continuous.is_some() {
                // Whole-host profiling ended: store its last window and detach it.
                self.flush_continuous();
                self.continuous = None;
            }
            if let Some(c) = &config {
                self.draw_continuous(&rules, c, now);
            }
            pass.mark("continuous draws");
            self.tune(&rules, config.as_ref(), now);
            self.watch_triggers(config.as_ref(), now);
            self.guard_overhead();
            self.retune_frequency();
            pass.mark("tuning, triggers and the overhead guard");
            if let Some(c) = &mut self.continuous {
                c.discover();
            }
            for c in self.targeted.values_mut() {
                c.discover();
            }
            pass.mark("discovering processes");
            self.flush_running();
            pass.mark("storing running runs' windows");
            pass.report();
            // Up to 250 ms, or until the first running run's time is up, so runs (and windows)
            // end on time rather than up to a nap late.
            let next_end = sync::lock(&self.scheduler).next_end();
            let mut nap = Duration::from_millis(250);
            if let Some(end) = next_end {
                nap = nap.min(Duration::from_millis(end.saturating_sub(clock())));
            }
            if window_ended {
                nap = Duration::ZERO;
            }
            std::thread::sleep(nap.max(Duration::from_millis(2)));
        }
        self.flush_continuous();
        let ids: Vec<u64> = self.targeted.keys().copied().collect();
        for id in ids {
            let now = clock();
            sync::lock(&self.scheduler).end_early(id, now, "baton up stopped");
            self.stop_targeted(id, true);
        }
        self.continuous = None;
    }

    /// The scheduler's part of a pass: keeps the host chain going (or ends it where the
    /// config's rules replace it), hands it a new config, stops cancelled runs and runs whose
    /// targets all exited, and ticks.
    fn decide(
        &mut self,
        by_services: bool,
        config: Option<&baton_config::Config>,
        now: u64,
        last_prune: &mut Instant,
    ) -> Vec<Decision> {
        let mut s = sync::lock(&self.scheduler);
        let host_chain: Vec<(u64, RunState)> = s
            .runs()
            .filter(|r| is_host_chain(&r.request.mode) && !r.state.is_terminal())
            .map(|r| (r.id, r.state))
            .collect();
        let mut out = Vec::new();
        if by_services {
            // The config's rules replace whole-host profiling.
            for (id, _) in &host_chain {
                out.extend(s.end_early(
                    *id,
                    now,
                    "the config's continuous rules replace whole-host profiling",
                ));
            }
        } else if host_chain.iter().all(|(_, st)| *st == RunState::Processing) {
            let window_ms = window_for(self.window_flag, self.live.as_deref()).as_millis() as u64;
            sync::write(&self.status).window_ms = Some(window_ms);
            drop(s);
            let next = self.next_host_window(now, window_ms);
            s = sync::lock(&self.scheduler);
            if let Some((duration_ms, weight)) = next {
                let req = JobRequest {
                    profiler: "cpu".into(),
                    host: LOCAL_HOST.into(),
                    target: "host".into(),
                    mode: Mode::Continuous {
                        service: HOST_CHAIN.into(),
                        rule: 0,
                    },
                    duration_ms,
                    frequency: Some(self.opts.start.frequency_hz),
                    priority: 0,
                    force: false,
                    owner: "continuous".into(),
                    not_before: now,
                    weight,
                    options: Default::default(),
                };
                if let Err(e) = s.submit(req, now) {
                    tracing::error!(error = %e, "queueing the continuous run failed");
                }
            }
        }
        // A new config's limits and profiler specs reach the scheduler.
        if let Some(c) = config {
            if self.config_version.as_deref() != Some(c.version.as_str()) {
                baton_profilers::registry::set_adhoc(c.adhoc.values());
                s.reconfigure(c);
                self.config_version = Some(c.version.clone());
            }
        }
        // A cancelled targeted run stops at once.
        let cancelled: Vec<u64> = self
            .targeted
            .keys()
            .copied()
            .filter(|id| s.run(*id).is_some_and(|r| r.state == RunState::Cancelled))
            .collect();
        if !cancelled.is_empty() {
            drop(s);
            for id in cancelled {
                self.stop_targeted(id, false);
            }
            s = sync::lock(&self.scheduler);
        }
        // Targets that all exited end their run early.
        for (id, c) in &self.targeted {
            if c.live_targets().is_empty() {
                out.extend(s.end_early(*id, now, "every target process exited"));
            }
        }
        out.extend(s.tick(now));
        if last_prune.elapsed() > Duration::from_secs(60) {
            s.forget_continuous_ended(now.saturating_sub(600_000));
            *last_prune = Instant::now();
        }
        out
    }

    /// The weight of a run's samples.
    fn run_weight(&self, id: u64) -> f64 {
        let s = sync::lock(&self.scheduler);
        s.run(id).map_or(1.0, |r| r.request.weight)
    }

    fn is_host_chain(&self, id: u64) -> bool {
        let s = sync::lock(&self.scheduler);
        s.run(id).is_some_and(|r| is_host_chain(&r.request.mode))
    }

    /// Carries out one decision of the scheduler.
    fn apply(&mut self, d: Decision, now: u64) {
        match d {
            Decision::Start { run, .. } | Decision::Resume { run, .. } => {
                if self.is_host_chain(run) {
                    if self.continuous_run != Some(run) {
                        // A new window: its weight, and its rows counted from 0.
                        self.chain_weight = self.run_weight(run);
                        self.chain_rows = 0;
                    }
                    self.continuous_run = Some(run);
                    if self.continuous.is_none() && !self.guard.paused() {
                        match Collector::start(&self.opts) {
                            Ok(c) => self.continuous = Some(c),
                            Err(e) => {
                                tracing::error!(error = %e, "resuming continuous profiling failed")
                            }
                        }
                    }
                } else {
                    self.start_targeted(run, now);
                }
            }
            Decision::Preempt { run, by, .. } => {
                // Free the PMU: store what the preempted run has, then detach it.
                if self.targeted.contains_key(&run) {
                    self.stop_targeted(run, false);
                } else {
                    let samples = self.flush_continuous();
                    tracing::info!(run, by, samples, "continuous profiling preempted");
                    self.continuous = None;
                }
            }
            Decision::Stop { run, .. } => {
                if self.targeted.contains_key(&run) {
                    self.stop_targeted(run, true);
                } else if self.is_host_chain(run) {
                    let samples = self.flush_continuous();
                    sync::lock(&self.scheduler).finish(run, samples, None);
                    if let Some(r) = &self.remote {
                        // A drawn window ended: what it stored teaches the fleet tuner.
                        sync::lock(r).add_yield(HOST_CHAIN, 0, true, self.chain_rows);
                    }
                } else {
                    // Ended before its collector started (e.g. ended while suspended).
                    sync::lock(&self.scheduler).finish(run, 0, None);
                }
            }
        }
    }

    /// Evaluates the config's triggers and queues the runs they fire.
    fn watch_triggers(&mut self, config: Option<&baton_config::Config>, now: u64) {
        let Some(config) = config else {
            return;
        };
        let requests = self.triggers.poll(config, LOCAL_HOST, now);
        let fired: u64 = self.triggers.engine.fired.values().sum();
        let suppressed: u64 = self.triggers.engine.suppressed.values().sum();
        self.metrics.trigger_firings.store(fired, Ordering::Relaxed);
        self.metrics
            .trigger_suppressed
            .store(suppressed, Ordering::Relaxed);
        if requests.is_empty() {
            return;
        }
        let mut s = sync::lock(&self.scheduler);
        for r in requests {
            let (owner, target) = (r.owner.clone(), r.target.clone());
            match s.submit(r, now) {
                Ok(id) => eprintln!("baton up: {owner} fired run {id} on {target}"),
                Err(e) => tracing::error!(error = %e, "a triggered run was refused"),
            }
        }
    }
}
