//! The fleet's tuner on the server: agents report what their drawn runs and whole-host windows
//! yielded (`Heartbeat::yields`), the server counts the hosts that run each service, and
//! `baton_scheduler::FleetTuner` (the same code `baton plan` runs) sets one probability per rule
//! for the whole fleet. Every heartbeat reply carries the probabilities; agents draw against
//! them and weight what a draw stores by its inverse.

use baton_model::sync::{lock, read};
use baton_scheduler::{host_chain_key, tuned_rules, FleetTuner, FleetTunerState, TunedRule};
use serde::Serialize;

use super::{Fleet, Probabilities, RuleProbability, RuleYield};

/// Whole-host windows when neither the config nor any agent says (the driver's default).
const DEFAULT_WINDOW_MS: u64 = 10_000;

/// The tuner and what it last said.
pub struct Tuning {
    tuner: FleetTuner,
    /// Re-tunes since this server took the control plane.
    retunes: u64,
    last_retune_ms: Option<u64>,
    rules: Vec<TunedRule>,
    /// What replies carry, recomputed after every change.
    said: Probabilities,
    /// Changed since last written to the store.
    dirty: bool,
}

impl Tuning {
    /// A tuner with the daily default period (the config's `[tuner] interval` replaces it).
    pub fn new(now: u64) -> Tuning {
        Tuning {
            tuner: FleetTuner::new(24 * 3_600_000, 1.0, now),
            retunes: 0,
            last_retune_ms: None,
            rules: Vec::new(),
            said: Probabilities::default(),
            dirty: false,
        }
    }

    fn refresh(&mut self) {
        let host_key = host_chain_key();
        let mut said = Probabilities::default();
        for r in &self.rules {
            let p = self.tuner.probability(&r.key);
            if r.key == host_key {
                said.host_chain = Some(p);
            } else {
                said.rules.push(RuleProbability {
                    service: r.key.0.clone(),
                    rule: r.key.1,
                    probability: p,
                });
            }
        }
        self.said = said;
    }
}

/// One rule as `GET /api/v1/tuner` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TunedView {
    pub service: String,
    pub rule: usize,
    pub probability: f64,
    pub target_per_hour: u64,
    pub draws_per_host_per_hour: f64,
    /// Hosts that run the service now (every host up, for the whole-host chain).
    pub hosts: u64,
    /// Raw samples (rows, for the whole-host chain) per drawn run or window, once learnt.
    pub yield_per_hit: Option<f64>,
    /// Hits and samples in the period under way, and since the tuner first saw the rule.
    pub period_hits: u64,
    pub period_samples: u64,
    pub total_hits: u64,
    pub total_samples: u64,
    /// What the fleet stores an hour at this probability, by the learnt yield.
    pub expected_per_hour: Option<f64>,
    /// Re-tunes of the whole tuner since this server took the control plane.
    pub retunes: u64,
}

/// `GET /api/v1/tuner`.
#[derive(Debug, Clone, Serialize)]
pub struct TunerView {
    pub interval_s: f64,
    pub last_retune_ms: Option<u64>,
    pub rules: Vec<TunedView>,
}

impl Fleet {
    /// Counts what a host's draws yielded.
    pub fn learn(&self, host: &str, yields: &[RuleYield]) {
        if yields.is_empty() {
            return;
        }
        let now = (self.clock)();
        let mut t = lock(&self.tuning);
        for y in yields {
            t.tuner
                .observe(host, &(y.service.clone(), y.rule), y.hits, y.samples, now);
        }
        t.dirty = true;
    }

    /// The probabilities heartbeat replies carry.
    pub fn probabilities(&self) -> Probabilities {
        lock(&self.tuning).said.clone()
    }

    /// The rules of the live config, with the whole-host chain's windows those agents report
    /// (else the config's, else 10 s), and the hosts up per service.
    fn rules_and_hosts(&self) -> (Vec<TunedRule>, Vec<u64>, Option<u64>) {
        let Some(live) = &self.config else {
            return (Vec::new(), Vec::new(), None);
        };
        let (config, interval) = {
            let l = read(live);
            let Some(c) = l.config.clone() else {
                return (Vec::new(), Vec::new(), None);
            };
            let i = c.tuner.interval.as_millis() as u64;
            (c, i)
        };
        let st = self.lock();
        let up: Vec<_> = st.hosts.values().filter(|h| h.state == "up").collect();
        let windows: Vec<u64> = up.iter().filter_map(|h| h.window_ms).collect();
        let window = if windows.is_empty() {
            config
                .profilers
                .get("cpu")
                .and_then(|p| p.window)
                .map_or(DEFAULT_WINDOW_MS, |w| w.as_millis() as u64)
        } else {
            // Mixed windows: the fleet's mean draw rate is that of the harmonic mean window.
            let rate: f64 = windows
                .iter()
                .map(|w| 1.0 / (*w).max(1) as f64)
                .sum::<f64>()
                / windows.len() as f64;
            (1.0 / rate).round() as u64
        };
        let rules = tuned_rules(&config, window);
        let hosts = rules
            .iter()
            .map(|r| {
                if r.key == host_chain_key() {
                    up.len() as u64
                } else {
                    up.iter()
                        .filter(|h| h.registration.services.contains(&r.key.0))
                        .count() as u64
                }
            })
            .collect();
        (rules, hosts, Some(interval))
    }

    /// Sets each rule's hosts and re-tunes when due. Returns the tuner's state, as JSON, when
    /// it changed since the last call (to be written to the store).
    pub fn tune(&self) -> Option<String> {
        let (rules, hosts, interval) = self.rules_and_hosts();
        let now = (self.clock)();
        let mut t = lock(&self.tuning);
        if let Some(i) = interval {
            t.tuner.set_interval(i);
        }
        for (r, n) in rules.iter().zip(&hosts) {
            let before = t.tuner.probability(&r.key);
            t.tuner.set_population(&r.key, *n, now);
            if t.tuner.probability(&r.key) != before {
                t.dirty = true;
            }
        }
        if t.tuner.maybe_retune(now, &rules) {
            t.retunes += 1;
            t.last_retune_ms = Some(now);
            t.dirty = true;
            for r in &rules {
                tracing::info!(service = %r.key.0, rule = r.key.1, p = t.tuner.probability(&r.key), "fleet tuner: re-tuned");
            }
        }
        let changed = t.rules != rules || t.dirty;
        t.rules = rules;
        if changed {
            t.refresh();
        }
        if !std::mem::take(&mut t.dirty) {
            return None;
        }
        serde_json::to_string(&t.tuner.state()).ok()
    }

    /// Takes back the tuner's state from the store.
    pub fn restore_tuning(&self, json: &str) {
        match serde_json::from_str::<FleetTunerState>(json) {
            Ok(state) => {
                let mut t = lock(&self.tuning);
                t.tuner.restore(&state);
                t.refresh();
            }
            Err(e) => {
                tracing::warn!(error = %e, "the stored tuner state is unreadable; tuning afresh")
            }
        }
    }

    /// What `GET /api/v1/tuner` shows.
    pub fn tuner_view(&self) -> TunerView {
        let t = lock(&self.tuning);
        let rules = t
            .rules
            .iter()
            .filter_map(|r| {
                let s = t.tuner.status_of(&r.key)?;
                Some(TunedView {
                    service: r.key.0.clone(),
                    rule: r.key.1,
                    probability: s.probability,
                    target_per_hour: r.target_per_hour,
                    draws_per_host_per_hour: r.draws_per_host_per_hour,
                    hosts: s.hosts,
                    yield_per_hit: s.yield_per_hit,
                    period_hits: s.period.hits,
                    period_samples: s.period.samples,
                    total_hits: s.total.hits,
                    total_samples: s.total.samples,
                    expected_per_hour: s
                        .yield_per_hit
                        .map(|y| s.probability * s.hosts as f64 * r.draws_per_host_per_hour * y),
                    retunes: t.retunes,
                })
            })
            .collect();
        TunerView {
            interval_s: t.tuner.interval() as f64 / 1000.0,
            last_retune_ms: t.last_retune_ms,
            rules,
        }
    }
}
