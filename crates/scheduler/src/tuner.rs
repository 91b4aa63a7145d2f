//! Dynamic sampling: per-(service, rule) run probabilities tuned toward a samples-per-hour target.
//!
//! Each host draws against the probability at every slot of a continuous rule; every sample a
//! run yields carries the weight `1 / probability`, so fleet-wide sums stay unbiased. At the end
//! of each interval the tuner scales each probability by `target / observed` (clamped), which
//! converges in a few intervals while the load is steady.

use std::collections::{HashMap, HashSet};

use crate::Millis;

/// Lowest and highest run probability the tuner will set.
pub const MIN_PROBABILITY: f64 = 1e-6;
pub const MAX_PROBABILITY: f64 = 1.0;

#[derive(Debug, Clone)]
pub struct Tuner {
    interval_ms: Millis,
    window_start: Millis,
    initial: f64,
    p: HashMap<(String, usize), f64>,
    observed: HashMap<(String, usize), u64>,
    /// Rules that drew at least once this interval; the others keep their probability (a
    /// service absent from every host for a while says nothing about its rate).
    active: HashSet<(String, usize)>,
}

impl Tuner {
    pub fn new(interval_ms: Millis, initial: f64, now: Millis) -> Tuner {
        Tuner {
            interval_ms: interval_ms.max(1),
            window_start: now,
            initial: initial.clamp(MIN_PROBABILITY, MAX_PROBABILITY),
            p: HashMap::new(),
            observed: HashMap::new(),
            active: HashSet::new(),
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
        self.observed
            .get(&(service.to_string(), rule))
            .copied()
            .unwrap_or(0)
    }

    /// Sets a starting probability (e.g. from a plan) before any observation.
    pub fn seed(&mut self, service: &str, rule: usize, p: f64) {
        self.p.insert(
            (service.to_string(), rule),
            p.clamp(MIN_PROBABILITY, MAX_PROBABILITY),
        );
    }

    /// Notes that hosts drew for this rule (whatever the draw said) in the current interval.
    pub fn drew(&mut self, service: &str, rule: usize) {
        let key = (service.to_string(), rule);
        if !self.active.contains(&key) {
            self.active.insert(key);
        }
    }

    /// Counts samples a continuous run of this rule produced (raw, unweighted).
    pub fn observe(&mut self, service: &str, rule: usize, samples: u64) {
        *self
            .observed
            .entry((service.to_string(), rule))
            .or_default() += samples;
    }

    /// At the end of an interval, re-tunes every rule in `targets` (samples per hour) that drew
    /// or observed anything in it, and returns true. Before that, does nothing and returns false.
    pub fn maybe_retune(&mut self, now: Millis, targets: &[((String, usize), u64)]) -> bool {
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < self.interval_ms {
            return false;
        }
        let hours = elapsed as f64 / 3_600_000.0;
        for (key, target) in targets {
            if !self.active.contains(key) && !self.observed.contains_key(key) {
                continue;
            }
            let p = self.p.get(key).copied().unwrap_or(self.initial);
            let observed_per_hour = self.observed.get(key).copied().unwrap_or(0) as f64 / hours;
            let next = if observed_per_hour <= 0.0 {
                p * 4.0
            } else {
                // Move at most 10x per interval, so one odd interval cannot swing it wildly.
                p * (*target as f64 / observed_per_hour).clamp(0.1, 10.0)
            };
            self.p
                .insert(key.clone(), next.clamp(MIN_PROBABILITY, MAX_PROBABILITY));
        }
        self.observed.clear();
        self.active.clear();
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
        // `a` drew and saw twice its target; `b` had no host to draw on.
        t.drew("a", 0);
        t.observe("a", 0, 200);
        assert!(t.maybe_retune(hour, &targets));
        assert!((t.probability("a", 0) - 0.25).abs() < 1e-9);
        assert_eq!(t.probability("b", 0), 0.5);
        // A rule that drew but saw nothing is raised.
        t.drew("b", 0);
        assert!(t.maybe_retune(2 * hour, &targets));
        assert_eq!(t.probability("b", 0), 1.0);
    }
}
