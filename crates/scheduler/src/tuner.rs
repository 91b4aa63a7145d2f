//! Dynamic sampling: per-(service, rule) run probabilities tuned toward a samples-per-hour target.
//!
//! Each host draws against the probability at every slot of a continuous rule; every sample a
//! run yields carries the weight `1 / probability`, so fleet-wide sums stay unbiased.
//!
//! At the end of each interval the tuner estimates what one run yields (raw samples per ended
//! run) and how many draws the fleet makes per hour, and sets
//! `p = target / (draws per hour × yield per run)`, moving at most 10× per interval. Luck in the
//! draws does not move `p`: an interval where every draw missed still knows the draw rate, and
//! keeps the last known yield. A rule that no host drew for keeps its probability.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Millis;

/// Lowest and highest run probability the tuner will set.
pub const MIN_PROBABILITY: f64 = 1e-6;
pub const MAX_PROBABILITY: f64 = 1.0;

/// What the tuner saw of one rule in the current interval.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    draws: u64,
    runs: u64,
    samples: u64,
}

/// What the tuner has learnt of one rule, for keeping across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub service: String,
    pub rule: usize,
    pub probability: f64,
    pub yield_per_run: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Tuner {
    interval_ms: Millis,
    window_start: Millis,
    initial: f64,
    p: HashMap<(String, usize), f64>,
    seen: HashMap<(String, usize), Seen>,
    /// The last known raw samples per ended run, per rule.
    yield_per_run: HashMap<(String, usize), f64>,
}

impl Tuner {
    pub fn new(interval_ms: Millis, initial: f64, now: Millis) -> Tuner {
        Tuner {
            interval_ms: interval_ms.max(1),
            window_start: now,
            initial: initial.clamp(MIN_PROBABILITY, MAX_PROBABILITY),
            p: HashMap::new(),
            seen: HashMap::new(),
            yield_per_run: HashMap::new(),
        }
    }

    /// The probability that a host runs this rule in a slot.
    pub fn probability(&self, service: &str, rule: usize) -> f64 {
        self.p
            .get(&(service.to_string(), rule))
            .copied()
            .unwrap_or(self.initial)
    }

    /// Changes the re-tuning interval (after a config reload); the current interval keeps its
    /// start.
    pub fn set_interval(&mut self, interval_ms: Millis) {
        self.interval_ms = interval_ms.max(1);
    }

    /// Raw samples counted for a rule since the last re-tune.
    pub fn observed(&self, service: &str, rule: usize) -> u64 {
        self.seen
            .get(&(service.to_string(), rule))
            .map_or(0, |s| s.samples)
    }

    /// What the tuner has learnt, rule by rule (sorted).
    pub fn state(&self) -> Vec<RuleState> {
        let mut keys: Vec<&(String, usize)> =
            self.p.keys().chain(self.yield_per_run.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| RuleState {
                service: k.0.clone(),
                rule: k.1,
                probability: self.p.get(k).copied().unwrap_or(self.initial),
                yield_per_run: self.yield_per_run.get(k).copied(),
            })
            .collect()
    }

    /// Takes back what an earlier tuner learnt.
    pub fn restore(&mut self, state: &[RuleState]) {
        for r in state {
            let key = (r.service.clone(), r.rule);
            if r.probability.is_finite() {
                self.p.insert(
                    key.clone(),
                    r.probability.clamp(MIN_PROBABILITY, MAX_PROBABILITY),
                );
            }
            if let Some(y) = r.yield_per_run.filter(|y| y.is_finite() && *y > 0.0) {
                self.yield_per_run.insert(key, y);
            }
        }
    }

    /// Sets a starting probability (e.g. from a plan) before any observation.
    pub fn seed(&mut self, service: &str, rule: usize, p: f64) {
        self.p.insert(
            (service.to_string(), rule),
            p.clamp(MIN_PROBABILITY, MAX_PROBABILITY),
        );
    }

    fn entry(&mut self, service: &str, rule: usize) -> &mut Seen {
        self.seen.entry((service.to_string(), rule)).or_default()
    }

    /// Counts `n` draws (hosts that drew, whatever the draw said) for this rule.
    pub fn drew(&mut self, service: &str, rule: usize, n: u64) {
        self.entry(service, rule).draws += n;
    }

    /// Counts raw samples a continuous run of this rule stored; `ended` when the run is over
    /// (a preempted run reports its samples so far without ending).
    pub fn observe(&mut self, service: &str, rule: usize, samples: u64, ended: bool) {
        let s = self.entry(service, rule);
        s.samples += samples;
        if ended {
            s.runs += 1;
        }
    }

    /// At the end of an interval, re-tunes every rule in `targets` (samples per hour) that drew
    /// in it, and returns true. Before that, does nothing and returns false.
    pub fn maybe_retune(&mut self, now: Millis, targets: &[((String, usize), u64)]) -> bool {
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < self.interval_ms {
            return false;
        }
        let hours = elapsed as f64 / 3_600_000.0;
        for (key, target) in targets {
            let seen = self.seen.get(key).copied().unwrap_or_default();
            if seen.runs > 0 {
                self.yield_per_run
                    .insert(key.clone(), seen.samples as f64 / seen.runs as f64);
            }
            if seen.draws == 0 {
                continue;
            }
            let p = self.p.get(key).copied().unwrap_or(self.initial);
            let next = match self.yield_per_run.get(key) {
                Some(y) if *y > 0.0 => {
                    let at_p1 = seen.draws as f64 / hours * y;
                    // Move at most 10x per interval, so one odd interval cannot swing it wildly.
                    (*target as f64 / at_p1).clamp(p / 10.0, p * 10.0)
                }
                // Runs so far yielded nothing, or none has ended yet: look harder.
                _ => p * 4.0,
            };
            self.p
                .insert(key.clone(), next.clamp(MIN_PROBABILITY, MAX_PROBABILITY));
        }
        self.seen.clear();
        self.window_start = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_that_never_drew_keeps_its_probability() {
        let hour = 3_600_000;
        let mut t = Tuner::new(hour, 0.5, 0);
        let targets = vec![(("a".to_string(), 0), 100), (("b".to_string(), 0), 100)];
        // `a`: 4 draws, 2 runs of 100 samples: 400 an hour at p = 1, so p = 0.25.
        t.drew("a", 0, 4);
        t.observe("a", 0, 100, true);
        t.observe("a", 0, 100, true);
        assert!(t.maybe_retune(hour, &targets));
        assert!((t.probability("a", 0) - 0.25).abs() < 1e-9);
        // `b` had no host to draw on.
        assert_eq!(t.probability("b", 0), 0.5);
        // `a` drew 4 times and every draw missed: the yield is known, p stays.
        t.drew("a", 0, 4);
        assert!(t.maybe_retune(2 * hour, &targets));
        assert!((t.probability("a", 0) - 0.25).abs() < 1e-9);
        // `b` drew but no run has ever ended: it looks harder.
        t.drew("b", 0, 1);
        assert!(t.maybe_retune(3 * hour, &targets));
        assert_eq!(t.probability("b", 0), 1.0);
        // What it learnt survives a restart.
        let mut again = Tuner::new(hour, 1.0, 0);
        again.restore(&t.state());
        assert_eq!(again.state(), t.state());
        assert!((again.probability("a", 0) - 0.25).abs() < 1e-9);
    }
}
