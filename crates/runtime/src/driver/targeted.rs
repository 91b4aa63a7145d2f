//! Targeted runs: every run but the whole-host chain (on-demand, triggered, a continuous rule's
//! draw) gets its own collector on the processes its target names now. Its windows are stored
//! under its run id, with its weight and service, when it stops, and while it runs for
//! profilers that flush (ad-hoc scripts) and, once a window, for on-demand and triggered runs
//! of profilers that report a level (`malloc`'s `live_bytes`), so it reads as a series.

use std::time::{Duration, Instant};

use baton_agent::targets::{resolve, Target, TargetError};
use baton_agent::{AgentError, Collector, CollectorOptions};
use baton_model::sync;
use baton_profilers::StartOptions;
use baton_scheduler::Mode;

use super::continuous::window_for;
use super::Driver;
use crate::scheduler_clock as clock;

/// Why a targeted run could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Collector(#[from] AgentError),
}

impl Driver {
    pub(super) fn start_targeted(&mut self, id: u64, now: u64) {
        let (target, mut frequency, continuous, profiler, mut options) = {
            let s = sync::lock(&self.scheduler);
            match s.run(id) {
                Some(r) => (
                    r.request.target.clone(),
                    r.frequency,
                    matches!(r.request.mode, Mode::Continuous { .. }),
                    r.request.profiler.clone(),
                    r.request.options.clone(),
                ),
                None => return,
            }
        };
        // The config's `[profilers.NAME] options` apply where the request does not say.
        if let Some(live) = &self.live {
            let l = sync::read(live);
            if let Some(o) = l.config.as_ref().and_then(|c| c.profilers.get(&profiler)) {
                let before = options.len();
                for (k, v) in &o.options {
                    options.entry(k.clone()).or_insert_with(|| v.clone());
                }
                if options.len() != before {
                    sync::lock(&self.scheduler).set_options(id, options.clone());
                }
            }
        }
        // The overhead guard holds continuous runs of services too.
        if continuous {
            if self.guard.paused() {
                let mut s = sync::lock(&self.scheduler);
                s.end_early(id, now, "overhead guard: continuous profiling is paused");
                s.finish(id, 0, None);
                return;
            }
            if let Some(cap) = self.guard.cap {
                if frequency > cap {
                    frequency = cap;
                    sync::lock(&self.scheduler).lower_frequency(id, cap);
                }
            }
        }
        let services = |name: &str| {
            let l = sync::read(self.live.as_ref()?);
            Some(l.config.as_ref()?.services.get(name)?.selector.clone())
        };
        let started = Target::parse(&target)
            .and_then(|t| resolve(&t, &services))
            .map_err(StartError::from)
            .and_then(|pids| {
                let opts = CollectorOptions {
                    profiler: profiler.clone(),
                    start: StartOptions {
                        frequency_hz: frequency,
                        targets: Some(pids),
                        follow_forks: true,
                        force_cpu_clock: self.opts.start.force_cpu_clock,
                        dwarf: self.opts.start.dwarf,
                        options,
                        pending_exec: None,
                        attach_in_background: true,
                    },
                    host: self.opts.host.clone(),
                    // On-demand and triggered runs ask JVMs for their JIT maps; continuous
                    // runs do not attach to them.
                    jvm_perf_maps: !continuous,
                    defer_discovery: false,
                    defer_symbols: self.opts.defer_symbols,
                    pods: self.opts.pods.clone(),
                };
                Ok(Collector::start(&opts)?)
            });
        match started {
            Ok(c) => {
                if frequency > 0 {
                    eprintln!("baton up: run {id} started ({target} at {frequency} Hz)");
                } else {
                    eprintln!("baton up: run {id} started ({profiler} on {target})");
                }
                self.targeted.insert(id, c);
                self.profiling_since.insert(id, Instant::now());
            }
            Err(e) => {
                eprintln!("baton up: run {id} could not start: {e}");
                let mut s = sync::lock(&self.scheduler);
                let continuous = s
                    .run(id)
                    .is_some_and(|r| matches!(r.request.mode, Mode::Continuous { .. }));
                if continuous && matches!(e, StartError::Target(TargetError::NoLiveProcess(_))) {
                    // The service's processes left between the draw and the start: nothing
                    // to profile in this slot, which is not a failure.
                    s.end_early(id, now, "no live process of the service at start");
                    s.finish(id, 0, None);
                } else {
                    s.end_early(id, now, "could not start");
                    s.finish(id, 0, Some(e.to_string()));
                }
            }
        }
    }

    /// Drains a targeted collector into the store under its run id and detaches it. Samples get
    /// the run's weight and, for a service's run, the `service` label; a continuous rule's
    /// samples count toward its tuner. With `finish`, the run is done; without, it was preempted
    /// (or cancelled) and only its samples so far are counted.
    pub(super) fn stop_targeted(&mut self, id: u64, finish: bool) {
        let Some(mut c) = self.targeted.remove(&id) else {
            return;
        };
        self.flush_due.remove(&id);
        let flushed = self.flushed.remove(&id).unwrap_or(0);
        c.finish();
        let (samples, failure) = match self.store_run_window(id, &mut c) {
            Ok(n) => {
                if let Mode::Continuous { service, rule } = &self.run_mode(id) {
                    self.tuner.observe(service, *rule, flushed + n, finish);
                    if let Some(r) = &self.remote {
                        sync::lock(r).add_yield(service, *rule, finish, flushed + n);
                    }
                }
                (n, None)
            }
            Err(e) => (0, Some(e.to_string())),
        };
        drop(c);
        self.profiling_since.remove(&id);
        let mut s = sync::lock(&self.scheduler);
        if finish {
            match &failure {
                Some(e) => eprintln!(
                    "baton up: run {id} failed after {} samples: {e}",
                    flushed + samples
                ),
                None => eprintln!(
                    "baton up: run {id} ended with {} samples",
                    flushed + samples
                ),
            }
            s.finish(id, samples, failure);
        } else {
            eprintln!(
                "baton up: run {id} stopped after {} samples",
                flushed + samples
            );
            s.add_samples(id, samples);
        }
    }

    fn run_mode(&self, id: u64) -> Mode {
        let s = sync::lock(&self.scheduler);
        s.run(id)
            .map(|r| r.request.mode.clone())
            .unwrap_or(Mode::OnDemand)
    }

    /// Drains a targeted run's collector and stores the window under its run id. Samples get
    /// the run's weight and, for a service's run, the `service` label. Returns the raw count.
    fn store_run_window(&mut self, id: u64, c: &mut Collector) -> Result<u64, AgentError> {
        let (mode, mut weight, duration_ms) = {
            let s = sync::lock(&self.scheduler);
            match s.run(id) {
                // A run preempted (or resumed) profiled in parts: its nominal weight stands.
                Some(r) if r.preemptions > 0 => (r.request.mode.clone(), r.request.weight, 0),
                Some(r) => (
                    r.request.mode.clone(),
                    r.request.weight,
                    r.request.duration_ms,
                ),
                None => (Mode::OnDemand, 1.0, 0),
            }
        };
        // A continuous rule's run stands for its share of the slot: the time it really
        // profiled, which is its duration less the time its profiler took to attach (a good
        // part of a second on a loaded host). Its weight counts that time, so weighted sums stay
        // estimates of the whole (ad-hoc scripts, which attach in the background and flush
        // while they run, and runs preempted on the way keep their nominal weight).
        if let (Mode::Continuous { .. }, Some(since), None) =
            (&mode, self.profiling_since.get(&id), c.flush_interval())
        {
            let profiled = since.elapsed().as_millis() as f64;
            if duration_ms > 0 && profiled > 0.0 {
                weight *= (duration_ms as f64 / profiled).clamp(1.0, 20.0);
                sync::lock(&self.scheduler).set_weight(id, weight);
            }
        }
        let service = match &mode {
            Mode::Continuous { service, .. } | Mode::Triggered { service, .. } => {
                Some(service.clone())
            }
            Mode::OnDemand => None,
        };
        // In fleet mode the samples carry the server's run id.
        let label = self
            .remote
            .as_ref()
            .map_or(id, |r| sync::lock(r).label_id(id))
            .to_string();
        let mut r = c.collect(Some(&self.metrics))?;
        for s in &mut r.batch.samples {
            s.labels.insert("run".into(), label.clone());
            s.weight *= weight;
            if let Some(svc) = &service {
                s.labels.insert("service".into(), svc.clone());
            }
        }
        for h in &mut r.batch.histograms {
            h.labels.insert("run".into(), label.clone());
            if let Some(svc) = &service {
                h.labels.insert("service".into(), svc.clone());
            }
            for b in &mut h.buckets {
                b.count *= weight;
            }
        }
        let n = r.sample_count;
        self.store_batch(r);
        Ok(n)
    }

    /// How often a running run's windows are stored: its profiler's own interval (ad-hoc
    /// scripts); or, for an on-demand or triggered run of a profiler that reports a level
    /// (`live_bytes`: what is held at a window's end), the profiler's `window` in the config,
    /// else the host's. A continuous rule's draw is one window, as its weight assumes.
    fn flush_every(&self, id: u64, c: &Collector) -> Option<Duration> {
        if let Some(every) = c.flush_interval() {
            return Some(every);
        }
        let info = c.info();
        if !info.values.iter().any(|v| baton_store::is_level(v.kind)) {
            return None;
        }
        let continuous = matches!(
            sync::lock(&self.scheduler).run(id).map(|r| &r.request.mode),
            Some(Mode::Continuous { .. })
        );
        if continuous {
            return None;
        }
        let own = self.live.as_deref().and_then(|l| {
            sync::read(l)
                .config
                .as_ref()?
                .profilers
                .get(info.name)?
                .window
        });
        Some(own.unwrap_or_else(|| window_for(self.window_flag, self.live.as_deref())))
    }

    /// Stores the windows of running runs whose windows are stored while they run (see
    /// [`Driver::flush_every`]), so their data is queryable before the run ends. A window that
    /// fails (the script's output cannot be stored, or passed its ceiling) fails the run.
    pub(super) fn flush_running(&mut self) {
        let now = Instant::now();
        let every: Vec<(u64, Duration)> = self
            .targeted
            .iter()
            .filter_map(|(id, c)| Some((*id, self.flush_every(*id, c)?)))
            .collect();
        let due: Vec<u64> = every
            .into_iter()
            .filter_map(|(id, every)| {
                let next = *self.flush_due.entry(id).or_insert(now + every);
                (now >= next).then_some(id)
            })
            .collect();
        for id in due {
            let Some(mut c) = self.targeted.remove(&id) else {
                continue;
            };
            match self.store_run_window(id, &mut c) {
                Ok(n) => {
                    *self.flushed.entry(id).or_insert(0) += n;
                    sync::lock(&self.scheduler).add_samples(id, n);
                    if let Some(every) = self.flush_every(id, &c) {
                        self.flush_due.insert(id, now + every);
                    }
                    self.targeted.insert(id, c);
                }
                Err(e) => {
                    drop(c);
                    self.flush_due.remove(&id);
                    let flushed = self.flushed.remove(&id).unwrap_or(0);
                    eprintln!("baton up: run {id} failed after {flushed} samples: {e}");
                    let mut s = sync::lock(&self.scheduler);
                    s.end_early(id, clock(), "failed while running");
                    s.finish(id, 0, Some(e.to_string()));
                }
            }
        }
    }
}
