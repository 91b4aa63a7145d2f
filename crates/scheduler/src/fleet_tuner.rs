//! Fleet-wide dynamic sampling: one run probability per (service, rule), tuned so that what the
//! whole fleet stores meets the rule's target per hour, however many hosts run the service.
//!
//! The whole-host chain is tuned the same way under the pseudo-key [`host_chain_key`], with a
//! fleet budget of stored sample rows per hour and one draw per host and window.
//!
//! One formula, for the fleet server, the agents' driver, `baton up` (a fleet of one) and
//! `baton plan`:
//!
//! `p = target / (hosts × draws per host per hour × yield per hit)`, clamped to
//! [[`MIN_PROBABILITY`], 1],
//!
//! where the yield per hit is learnt from what was stored: the raw samples (or rows, for the
//! host chain) that drawn runs or windows ended with, over the number of them, with the earlier
//! estimate counting for up to 15 hits more (so a period of few hits does not swing `p`, and one
//! of many stands on its own). The yield does not
//! depend on `p`, so one re-tune from a known yield lands on the target; luck in the draws does
//! not move `p`. A period with no hits keeps the last known yield; a rule with no yield known yet
//! looks harder (`p × 4`). A change of a rule's host count re-applies the formula at once.
//!
//! Re-tunes happen at the end of each period (the config's `[tuner] interval`), plus a first
//! quick one per rule: as soon as a rule with no (or a zero) yield known has [`QUICK_HITS`]
//! ended hits (one per host in a smaller fleet) and at least one of its slots has passed since
//! the tuner first saw it (every host has then drawn once; at the usual start, `p = 1`, every
//! host has run). Waiting a whole period for the first yield would leave the fleet at `p = 1`
//! (hosts times its target) for a day; re-tuning on the first hit would take one host's yield
//! for the fleet's, which can be off by any factor. The quick
//! step never overshoots: it sets `p` to exactly what the formula gives from the yield learnt,
//! never lower, so a fleet converging from `p = 1` comes down to the target in one step from
//! above and stays there.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::continuous::SlotRule;
use crate::Millis;

/// Lowest and highest run probability the tuner will set.
pub const MIN_PROBABILITY: f64 = 1e-6;
pub const MAX_PROBABILITY: f64 = 1.0;

const HOUR_MS: f64 = 3_600_000.0;

/// Hits the quick first re-tune waits for (or one per host, in a smaller fleet). Hosts yield
/// differently: the mean of 30 hits is off the fleet's mean by about a fifth of the hosts'
/// standard deviation, where the first hit alone can be off by any factor.
pub const QUICK_HITS: u64 = 30;

/// What the tuner tunes: a (service, rule index) pair.
pub type RuleKey = (String, usize);

/// The service name of the whole-host chain's pseudo-key.
pub const HOST_CHAIN_SERVICE: &str = "host";

/// The whole-host chain's pseudo-key, `("host", 0)`.
pub fn host_chain_key() -> RuleKey {
    (HOST_CHAIN_SERVICE.to_string(), 0)
}

/// One rule as the tuner sees it: its fleet-wide target and how often each host draws for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunedRule {
    pub key: RuleKey,
    /// Raw samples (rows, for the host chain) the whole fleet should store per hour.
    pub target_per_hour: u64,
    /// Draws one host makes per hour: `3,600,000 / slot_ms` for a rule, `3,600,000 /
    /// window_ms` for the host chain.
    pub draws_per_host_per_hour: f64,
}

impl TunedRule {
    /// A continuous rule: one draw per slot.
    pub fn from_slot_rule(r: &SlotRule) -> TunedRule {
        TunedRule {
            key: r.key(),
            target_per_hour: r.target_samples_per_hour,
            draws_per_host_per_hour: HOUR_MS / r.slot_ms.max(1) as f64,
        }
    }

    /// The whole-host chain: one draw per window, toward a fleet budget of rows per hour.
    pub fn host_chain(rows_per_hour: u64, window_ms: Millis) -> TunedRule {
        TunedRule {
            key: host_chain_key(),
            target_per_hour: rows_per_hour,
            draws_per_host_per_hour: HOUR_MS / window_ms.max(1) as f64,
        }
    }

    /// How long one draw lasts (a slot or a window).
    fn draw_ms(&self) -> Millis {
        (HOUR_MS / self.draws_per_host_per_hour.max(1e-9)) as Millis
    }
}

/// The rules a config tunes: its continuous rules, and the whole-host chain (at the config's
/// fleet row budget, windows of `window_ms`) when no rule is a CPU rule, which is when the host
/// chain runs.
pub fn tuned_rules(config: &baton_config::Config, window_ms: Millis) -> Vec<TunedRule> {
    let rules = crate::continuous::slot_rules(config);
    let host_chain = !rules.iter().any(|r| r.profiler == "cpu");
    let mut out: Vec<TunedRule> = rules.iter().map(TunedRule::from_slot_rule).collect();
    if host_chain {
        out.push(TunedRule::host_chain(
            config.tuner.host_rows_per_hour,
            window_ms,
        ));
    }
    out
}

/// The run probability that brings `hosts` hosts, each drawing `draws_per_host_per_hour`
/// times an hour with `yield_per_hit` samples per hit, to `target_per_hour`; clamped to
/// [[`MIN_PROBABILITY`], [`MAX_PROBABILITY`]].
pub fn fleet_probability(
    target_per_hour: u64,
    hosts: u64,
    draws_per_host_per_hour: f64,
    yield_per_hit: f64,
) -> f64 {
    let at_p1 = hosts as f64 * draws_per_host_per_hour * yield_per_hit;
    if at_p1 > 0.0 && at_p1.is_finite() {
        (target_per_hour as f64 / at_p1).clamp(MIN_PROBABILITY, MAX_PROBABILITY)
    } else {
        MAX_PROBABILITY
    }
}

/// Hits and samples counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub hits: u64,
    pub samples: u64,
}

impl Counts {
    fn add(&mut self, hits: u64, samples: u64) {
        self.hits += hits;
        self.samples += samples;
    }
}

/// What the tuner has learnt of one rule, for keeping across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub service: String,
    pub rule: usize,
    pub probability: f64,
    /// Raw samples per ended hit, once known.
    #[serde(alias = "yield_per_run")]
    pub yield_per_hit: Option<f64>,
    /// The hits that estimate stands on, decayed.
    #[serde(default)]
    pub yield_weight: f64,
    /// Hosts running the service when saved.
    #[serde(default)]
    pub hosts: u64,
    /// Counted in the period under way when saved.
    #[serde(default)]
    pub period: Counts,
    /// Counted since the tuner first saw the rule.
    #[serde(default)]
    pub total: Counts,
}

/// Everything the fleet tuner keeps across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetTunerState {
    /// When the period under way began.
    pub period_start: Millis,
    pub rules: Vec<RuleState>,
}

/// One rule's figures, for status output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleStatus {
    pub key: RuleKey,
    pub probability: f64,
    pub yield_per_hit: Option<f64>,
    pub hosts: u64,
    /// Hosts that reported hits in the period under way.
    pub hosts_reporting: u64,
    pub period: Counts,
    pub total: Counts,
}

#[derive(Debug, Clone)]
struct KeyState {
    p: f64,
    yield_per_hit: Option<f64>,
    /// The hits the yield estimate stands on, decayed (see [`KeyState::learn_yield`]).
    yield_weight: f64,
    hosts: u64,
    /// When the tuner first saw the rule (hosts or hits), for the quick first re-tune.
    first_seen: Option<Millis>,
    period: Counts,
    total: Counts,
    reporting: BTreeSet<String>,
    /// The target and draw rate of the last re-tune, to re-apply the formula when the hosts
    /// change.
    rule: Option<TunedRule>,
}

/// How much what earlier periods taught of a yield still counts in the next period's estimate…
pub const YIELD_DECAY: f64 = 0.5;
/// …standing for at most this many hits: a period with many hits of its own is nearly all its
/// own (no lag behind a daily load curve), one with a handful leans on the past.
pub const YIELD_PRIOR_HITS: f64 = 30.0;

impl KeyState {
    /// Folds the period's hits into the yield estimate: a mean over hits in which the earlier
    /// estimate counts as `YIELD_DECAY` × (its hits, at most `YIELD_PRIOR_HITS`). A period of few
    /// hits (a rule drawn a handful of times) then does not swing `p`, and one of many stands
    /// on its own.
    fn learn_yield(&mut self) {
        let hits = self.period.hits as f64;
        let samples = self.period.samples as f64;
        let (y, w) = match self.yield_per_hit {
            Some(y0) if self.yield_weight > 0.0 => {
                let w0 = self.yield_weight.min(YIELD_PRIOR_HITS) * YIELD_DECAY;
                ((y0 * w0 + samples) / (w0 + hits), w0 + hits)
            }
            _ => (samples / hits, hits),
        };
        self.yield_per_hit = Some(y);
        self.yield_weight = w;
    }

    /// Re-applies the formula with the known yield, hosts and rule; false when one is missing
    /// (no yield known, a yield of 0, no host, or never re-tuned).
    fn apply_formula(&mut self) -> bool {
        match (&self.rule, self.yield_per_hit) {
            (Some(r), Some(y)) if y > 0.0 && self.hosts > 0 => {
                self.p =
                    fleet_probability(r.target_per_hour, self.hosts, r.draws_per_host_per_hour, y);
                true
            }
            _ => false,
        }
    }
}

/// The fleet tuner: pure, with time injected.
#[derive(Debug, Clone)]
pub struct FleetTuner {
    interval_ms: Millis,
    period_start: Millis,
    initial: f64,
    keys: BTreeMap<RuleKey, KeyState>,
}

impl FleetTuner {
    /// A tuner re-tuning every `interval_ms`, from `initial` for rules it has not tuned yet.
    pub fn new(interval_ms: Millis, initial: f64, now: Millis) -> FleetTuner {
        FleetTuner {
            interval_ms: interval_ms.max(1),
            period_start: now,
            initial: initial.clamp(MIN_PROBABILITY, MAX_PROBABILITY),
            keys: BTreeMap::new(),
        }
    }

    fn entry(&mut self, key: &RuleKey) -> &mut KeyState {
        let initial = self.initial;
        self.keys.entry(key.clone()).or_insert_with(|| KeyState {
            p: initial,
            yield_per_hit: None,
            yield_weight: 0.0,
            hosts: 0,
            first_seen: None,
            period: Counts::default(),
            total: Counts::default(),
            reporting: BTreeSet::new(),
            rule: None,
        })
    }

    /// Changes the re-tune period (after a config reload); the period under way keeps its
    /// start.
    pub fn set_interval(&mut self, interval_ms: Millis) {
        self.interval_ms = interval_ms.max(1);
    }

    /// The re-tune period.
    pub fn interval(&self) -> Millis {
        self.interval_ms
    }

    /// Whether the period under way has ended at `now` (the next [`FleetTuner::maybe_retune`]
    /// re-tunes every rule).
    pub fn period_due(&self, now: Millis) -> bool {
        now.saturating_sub(self.period_start) >= self.interval_ms
    }

    /// A host reports that `hits` drawn runs (or windows) of `key` ended with `samples` raw
    /// samples (rows, for the host chain) stored in total.
    pub fn observe(&mut self, host: &str, key: &RuleKey, hits: u64, samples: u64, now: Millis) {
        let k = self.entry(key);
        k.first_seen.get_or_insert(now);
        k.period.add(hits, samples);
        k.total.add(hits, samples);
        if hits > 0 && !k.reporting.contains(host) {
            k.reporting.insert(host.to_string());
        }
    }

    /// How many hosts run `key`'s service now. A change re-applies the formula at once with
    /// the known yield (a rule not re-tuned yet, or with no yield known, keeps its `p`).
    pub fn set_population(&mut self, key: &RuleKey, hosts: u64, now: Millis) {
        let k = self.entry(key);
        if hosts > 0 {
            k.first_seen.get_or_insert(now);
        }
        if k.hosts == hosts {
            return;
        }
        k.hosts = hosts;
        k.apply_formula();
    }

    /// Sets a starting probability (e.g. from a plan) before any observation.
    pub fn seed(&mut self, key: &RuleKey, p: f64) {
        self.entry(key).p = p.clamp(MIN_PROBABILITY, MAX_PROBABILITY);
    }

    /// Sets a rule's yield per hit as known (e.g. a plan's, from the fleet's mean load), so the
    /// rule's first re-tune, or its next change of hosts, applies the formula with it.
    pub fn seed_yield(&mut self, key: &RuleKey, yield_per_hit: f64) {
        if yield_per_hit.is_finite() && yield_per_hit > 0.0 {
            let k = self.entry(key);
            k.yield_per_hit = Some(yield_per_hit);
            k.apply_formula();
        }
    }

    /// Re-tunes: every rule of `rules` at the end of the period (then starts the next one), and
    /// before that each rule due its quick first re-tune (see the module's doc). Returns true
    /// when it re-tuned any rule.
    pub fn maybe_retune(&mut self, now: Millis, rules: &[TunedRule]) -> bool {
        let due = self.period_due(now);
        let mut any = false;
        for rule in rules {
            let k = self.entry(&rule.key);
            if k.rule.as_ref() != Some(rule) {
                // A new or changed target or draw rate applies at once with the known yield.
                k.rule = Some(rule.clone());
                k.apply_formula();
            }
            let quick = !k.yield_per_hit.is_some_and(|y| y > 0.0)
                && k.period.hits >= k.hosts.clamp(1, QUICK_HITS)
                && k.first_seen
                    .is_some_and(|t| now.saturating_sub(t) >= rule.draw_ms());
            if !(due || quick) {
                continue;
            }
            any = true;
            if k.period.hits > 0 {
                k.learn_yield();
            }
            // Hits so far yielded nothing, or none has ended yet: look harder.
            if k.hosts > 0 && !k.apply_formula() {
                k.p = (k.p * 4.0).min(MAX_PROBABILITY);
            }
            if !due {
                k.period = Counts::default();
                k.reporting.clear();
            }
        }
        if due {
            for k in self.keys.values_mut() {
                k.period = Counts::default();
                k.reporting.clear();
            }
            self.period_start = now;
        }
        any
    }

    /// The probability that a host draws `key` in a slot (or window).
    pub fn probability(&self, key: &RuleKey) -> f64 {
        self.keys.get(key).map_or(self.initial, |k| k.p)
    }

    /// Every known rule's probability, sorted by key.
    pub fn probabilities(&self) -> Vec<(RuleKey, f64)> {
        self.keys.iter().map(|(k, s)| (k.clone(), s.p)).collect()
    }

    /// One rule's figures, when the tuner knows it.
    pub fn status_of(&self, key: &RuleKey) -> Option<RuleStatus> {
        self.keys.get(key).map(|k| RuleStatus {
            key: key.clone(),
            probability: k.p,
            yield_per_hit: k.yield_per_hit,
            hosts: k.hosts,
            hosts_reporting: k.reporting.len() as u64,
            period: k.period,
            total: k.total,
        })
    }

    /// Every known rule's figures, sorted by key.
    pub fn status(&self) -> Vec<RuleStatus> {
        self.keys.keys().filter_map(|k| self.status_of(k)).collect()
    }

    /// What the tuner has learnt, for keeping across restarts.
    pub fn state(&self) -> FleetTunerState {
        FleetTunerState {
            period_start: self.period_start,
            rules: self
                .keys
                .iter()
                .map(|(key, k)| RuleState {
                    service: key.0.clone(),
                    rule: key.1,
                    probability: k.p,
                    yield_per_hit: k.yield_per_hit,
                    yield_weight: k.yield_weight,
                    hosts: k.hosts,
                    period: k.period,
                    total: k.total,
                })
                .collect(),
        }
    }

    /// Takes back what an earlier tuner learnt, and the period it was in.
    pub fn restore(&mut self, state: &FleetTunerState) {
        self.period_start = state.period_start;
        self.restore_rules(&state.rules);
    }

    /// Takes back what an earlier tuner learnt of each rule (bad numbers are ignored). The
    /// rules' host counts come back too, until the caller sets them.
    pub fn restore_rules(&mut self, rules: &[RuleState]) {
        for r in rules {
            let k = self.entry(&(r.service.clone(), r.rule));
            if r.probability.is_finite() {
                k.p = r.probability.clamp(MIN_PROBABILITY, MAX_PROBABILITY);
            }
            if let Some(y) = r.yield_per_hit.filter(|y| y.is_finite() && *y >= 0.0) {
                k.yield_per_hit = Some(y);
                k.yield_weight = r.yield_weight.max(0.0);
            }
            k.hosts = r.hosts;
            k.period = r.period;
            k.total = r.total;
        }
    }
}

#[cfg(test)]
mod tests;
