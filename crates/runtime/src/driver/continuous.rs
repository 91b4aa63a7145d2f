//! Continuous profiling: the whole-host chain's collector, the config's rules drawn once per
//! slot against their tuned probabilities, the tuner (kept across restarts), and the sampling
//! frequency (the flag, else the config's, lowered by the overhead guard).

use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use baton_agent::targets::selector_pids;
use baton_agent::Collector;
use baton_model::sync;
use baton_scheduler::continuous::{host_window_draw, host_window_weight, slot_rules, SlotRule};
use baton_scheduler::{Mode, RuleState, TunedRule};
use baton_server::api::{ContinuousStatus, RuleStatus};
use baton_server::LiveConfig;

use super::{Driver, HOST_CHAIN, LOCAL_HOST};

/// The tuner's state under the data directory.
pub const TUNER_FILE: &str = "tuner.json";

/// Why the tuner's state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TunerFileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The tuner's saved state, if there is one.
pub fn load_tuner(path: &Path) -> Result<Option<Vec<RuleState>>, TunerFileError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the state to a temporary file and renames it over the old one, so a crash never
/// leaves half a file.
fn save_tuner(path: &Path, state: &[RuleState]) -> Result<(), TunerFileError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The whole-host window: `--window`, else the config's `[profilers.cpu] window`, else 10 s
/// (never under 1 s).
pub fn window_for(flag: Option<Duration>, live: Option<&RwLock<LiveConfig>>) -> Duration {
    flag.or_else(|| {
        let l = sync::read(live?);
        l.config.as_ref()?.profilers.get("cpu")?.window
    })
    .unwrap_or(Duration::from_secs(10))
    .max(Duration::from_secs(1))
}

/// Whether a run is a window of the whole-host chain.
pub fn is_host_chain(mode: &Mode) -> bool {
    matches!(mode, Mode::Continuous { service, .. } if service == HOST_CHAIN)
}

impl Driver {
    /// Draws each continuous rule once per slot, for services with processes on this host, and
    /// queues the runs drawn with their weight `slot / (duration × p)`. In fleet mode `p` is the
    /// fleet tuner's, from the server; before the server has said one, this host's own.
    pub(super) fn draw_continuous(
        &mut self,
        rules: &[SlotRule],
        config: &baton_config::Config,
        now: u64,
    ) {
        for r in rules {
            let slot = r.slot_of(now);
            if self.drawn.get(&r.key()) == Some(&slot) {
                continue;
            }
            self.drawn.insert(r.key(), slot);
            let Some(svc) = config.services.get(&r.service) else {
                continue;
            };
            // A profiler this host cannot run (no NVIDIA driver) is said once, never queued.
            if let Some(why) = baton_profilers::registry::unavailable(&r.profiler) {
                if self.said_unavailable.insert(r.key()) {
                    eprintln!(
                        "baton up: continuous rule {}#{} ({}) is not run on this host: {why}",
                        r.service, r.rule, r.profiler
                    );
                }
                continue;
            }
            if selector_pids(&svc.selector).is_empty() {
                continue;
            }
            self.tuner.drew(&r.service, r.rule, 1);
            let p = self.rule_probability(r);
            let Some(req) = r.draw(self.host_key, LOCAL_HOST, slot, p, now) else {
                continue;
            };
            let weight = req.weight;
            let mut s = sync::lock(&self.scheduler);
            match s.submit(req, now) {
                Ok(id) => eprintln!(
                    "baton up: continuous run {id} of {}#{} drawn (p = {p:.4}, weight {weight:.2})",
                    r.service, r.rule
                ),
                Err(e) => tracing::error!(error = %e, "a continuous run was refused"),
            }
        }
    }

    /// A rule's run probability: the fleet tuner's in fleet mode once the server said one, else
    /// this host's own tuner's.
    fn rule_probability(&self, r: &SlotRule) -> f64 {
        let fleet = self
            .remote
            .as_ref()
            .and_then(|m| sync::lock(m).rule_probability(&r.service, r.rule));
        fleet.unwrap_or_else(|| self.tuner.probability(&r.service, r.rule))
    }

    /// Re-tunes the continuous rules' probabilities at the end of each tuner interval, and
    /// shows them in `/api/v1/status`.
    pub(super) fn tune(
        &mut self,
        rules: &[SlotRule],
        config: Option<&baton_config::Config>,
        now: u64,
    ) {
        if let Some(c) = config {
            self.tuner.set_interval(c.tuner.interval.as_millis() as u64);
        }
        let before: Vec<(f64, u64)> = rules
            .iter()
            .map(|r| {
                (
                    self.tuner.probability(&r.service, r.rule),
                    self.tuner.observed(&r.service, r.rule),
                )
            })
            .collect();
        let targets: Vec<TunedRule> = rules.iter().map(TunedRule::from_slot_rule).collect();
        if self.tuner.maybe_retune(now, &targets) {
            if let Err(e) = save_tuner(&self.tuner_file, &self.tuner.state()) {
                tracing::warn!(error = %e, "saving the tuner state failed");
            }
            // In fleet mode the server's tuner decides; this host's own is only the fallback
            // for when no server has answered yet, and is not worth a line.
            for (r, (p, seen)) in rules.iter().zip(&before).filter(|_| self.remote.is_none()) {
                eprintln!(
                    "baton up: tuner: {}#{} saw {seen} samples; probability {p:.4} -> {:.4} (target {}/h)",
                    r.service,
                    r.rule,
                    self.tuner.probability(&r.service, r.rule),
                    r.target_samples_per_hour
                );
            }
        }
        let list: Vec<RuleStatus> = rules
            .iter()
            .map(|r| {
                let p = self.rule_probability(r);
                RuleStatus {
                    service: r.service.clone(),
                    rule: r.rule,
                    profiler: r.profiler.clone(),
                    probability: p,
                    weight: r.weight(p),
                    duration_s: r.duration_ms as f64 / 1000.0,
                    slot_s: r.slot_ms as f64 / 1000.0,
                    target_samples_per_hour: r.target_samples_per_hour,
                    observed_samples: self.tuner.observed(&r.service, r.rule),
                    unavailable: baton_profilers::registry::unavailable(&r.profiler),
                }
            })
            .collect();
        sync::write(&self.status).continuous = Some(ContinuousStatus {
            mode: if rules.iter().any(|r| r.profiler == "cpu") {
                "services"
            } else {
                "host"
            },
            rules: list,
        });
    }

    /// The whole-host chain's next window, when this host profiles it: `(duration, weight)`.
    /// `baton up` profiles every window, back to back, at weight 1. In fleet mode windows are
    /// aligned to multiples of their length, and each is drawn against the fleet tuner's
    /// probability `p` (1 until the server says one): a drawn window weighs `1 / p`; for one not
    /// drawn, whole-host profiling is detached until the next window starts.
    pub(super) fn next_host_window(&mut self, now: u64, window_ms: u64) -> Option<(u64, f64)> {
        let Some(remote) = &self.remote else {
            return Some((window_ms, 1.0));
        };
        if now < self.chain_next_ms {
            return None;
        }
        let p = sync::lock(remote).host_chain_probability().unwrap_or(1.0);
        let window = now / window_ms.max(1);
        let end = (window + 1) * window_ms.max(1);
        self.chain_next_ms = end;
        if host_window_draw(self.host_key, window, p) {
            return Some((end - now, host_window_weight(p)));
        }
        if self.continuous.take().is_some() {
            tracing::debug!(
                p,
                "whole-host window {window} not drawn: detached until it ends"
            );
        }
        None
    }

    /// Stores the continuous collector's window, weighted as its host-chain window; returns its
    /// raw sample count.
    pub(super) fn flush_continuous(&mut self) -> u64 {
        let Some(c) = &mut self.continuous else {
            return 0;
        };
        match c.collect(Some(&self.metrics)) {
            Ok(mut r) => {
                let n = r.sample_count;
                if self.chain_weight != 1.0 {
                    for s in &mut r.batch.samples {
                        s.weight *= self.chain_weight;
                    }
                }
                self.chain_rows += self.store_batch(r);
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "draining a window failed");
                0
            }
        }
    }

    /// The highest frequency continuous profiling uses: that of the fastest continuous rule of
    /// the config, or the whole-host chain's when there is no rule.
    pub(super) fn highest_continuous_frequency(&self) -> u64 {
        let base = self.opts.start.frequency_hz;
        self.config()
            .map(|c| slot_rules(&c))
            .unwrap_or_default()
            .iter()
            .filter(|r| r.profiler == "cpu")
            .map(|r| r.frequency.unwrap_or(base))
            .max()
            .unwrap_or(base)
    }

    /// Restarts continuous profiling at a new rate when the wanted one (flag, config, guard's
    /// cap) changed.
    pub(super) fn retune_frequency(&mut self) {
        let want = (self.desired)().min(self.guard.cap.unwrap_or(u64::MAX));
        if want == self.opts.start.frequency_hz {
            return;
        }
        let previous = self.opts.start.frequency_hz;
        self.opts.start.frequency_hz = want;
        if self.continuous.is_some() && !self.guard.paused() {
            self.flush_continuous();
            self.continuous = None;
            match Collector::start(&self.opts) {
                Ok(c) => self.continuous = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "restarting at {want} Hz failed; staying at {previous} Hz");
                    self.opts.start.frequency_hz = previous;
                    self.continuous = Collector::start(&self.opts).ok();
                }
            }
        }
        eprintln!(
            "baton up: sampling frequency now {} Hz",
            self.opts.start.frequency_hz
        );
        sync::write(&self.status).frequency_hz = Some(self.opts.start.frequency_hz);
    }
}
