//! Dynamic sampling on one host (`baton up`): the fleet tuner over a fleet of one.
//!
//! The host counts its draws and the samples of its continuous runs; the probability comes from
//! the same formula as the fleet server's ([`FleetTuner`]), with one host. A rule whose service
//! had no process on the host during a whole period (no draw) keeps its probability.

use std::collections::BTreeSet;

use crate::fleet_tuner::{FleetTuner, RuleKey, RuleState, TunedRule};
use crate::Millis;

/// Samples from continuous runs, counted by the host itself, tuned as a fleet of one.
#[derive(Debug, Clone)]
pub struct Tuner {
    fleet: FleetTuner,
    /// Rules this host drew for in the period under way.
    drew: BTreeSet<RuleKey>,
    /// The time of the last [`Tuner::maybe_retune`] (the driver calls it every tick).
    clock: Millis,
}

/// The host name the one host reports under.
const LOCAL: &str = "local";

fn key(service: &str, rule: usize) -> RuleKey {
    (service.to_string(), rule)
}

impl Tuner {
    pub fn new(interval_ms: Millis, initial: f64, now: Millis) -> Tuner {
        Tuner {
            fleet: FleetTuner::new(interval_ms, initial, now),
            drew: BTreeSet::new(),
            clock: now,
        }
    }

    /// The probability that the host runs this rule in a slot.
    pub fn probability(&self, service: &str, rule: usize) -> f64 {
        self.fleet.probability(&key(service, rule))
    }

    /// Changes the re-tuning interval (after a config reload); the current interval keeps its
    /// start.
    pub fn set_interval(&mut self, interval_ms: Millis) {
        self.fleet.set_interval(interval_ms);
    }

    /// Raw samples counted for a rule since the last re-tune.
    pub fn observed(&self, service: &str, rule: usize) -> u64 {
        self.fleet
            .status_of(&key(service, rule))
            .map_or(0, |s| s.period.samples)
    }

    /// What the tuner has learnt, rule by rule (sorted).
    pub fn state(&self) -> Vec<RuleState> {
        self.fleet.state().rules
    }

    /// Takes back what an earlier tuner learnt.
    pub fn restore(&mut self, state: &[RuleState]) {
        self.fleet.restore_rules(state);
    }

    /// Sets a starting probability (e.g. from a plan) before any observation.
    pub fn seed(&mut self, service: &str, rule: usize, p: f64) {
        self.fleet.seed(&key(service, rule), p);
    }

    /// Counts draws for this rule: the host runs its service, whatever the draw said.
    pub fn drew(&mut self, service: &str, rule: usize, n: u64) {
        if n > 0 {
            let k = key(service, rule);
            self.fleet.set_population(&k, 1, self.clock);
            self.drew.insert(k);
        }
    }

    /// Counts raw samples a continuous run of this rule stored; `ended` when the run is over
    /// (a preempted run reports its samples so far without ending).
    pub fn observe(&mut self, service: &str, rule: usize, samples: u64, ended: bool) {
        self.fleet.observe(
            LOCAL,
            &key(service, rule),
            u64::from(ended),
            samples,
            self.clock,
        );
    }

    /// Re-tunes as [`FleetTuner::maybe_retune`] does; at the end of a period, a rule the host
    /// did not draw for counts no host (and keeps its probability).
    pub fn maybe_retune(&mut self, now: Millis, rules: &[TunedRule]) -> bool {
        self.clock = now;
        if self.fleet.period_due(now) {
            for r in rules {
                if !self.drew.contains(&r.key) {
                    self.fleet.set_population(&r.key, 0, now);
                }
            }
            self.drew.clear();
        }
        self.fleet.maybe_retune(now, rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_a_fleet_of_one() {
        let hour = 3_600_000;
        // Slots of 15 minutes: 4 draws an hour.
        let rule = |s: &str, target| TunedRule {
            key: key(s, 0),
            target_per_hour: target,
            draws_per_host_per_hour: 4.0,
        };
        let rules = vec![rule("a", 100), rule("b", 100)];
        let mut t = Tuner::new(hour, 1.0, 0);
        // `a`: 2 runs of 100 samples: 400 an hour at p = 1, so p = 0.25, the fleet formula's.
        t.drew("a", 0, 1);
        t.observe("a", 0, 60, false);
        t.observe("a", 0, 40, true);
        t.observe("a", 0, 100, true);
        assert!(t.maybe_retune(hour, &rules));
        let want = crate::fleet_tuner::fleet_probability(100, 1, 4.0, 100.0);
        assert!((t.probability("a", 0) - 0.25).abs() < 1e-9);
        assert_eq!(t.probability("a", 0), want);
        // `b` had no process to draw for.
        assert_eq!(t.probability("b", 0), 1.0);
        // `a` drew and every draw missed: the yield is known, p stays.
        t.drew("a", 0, 1);
        assert!(t.maybe_retune(2 * hour, &rules));
        assert!((t.probability("a", 0) - 0.25).abs() < 1e-9);
        // A period with no draw of `a` keeps p too.
        assert!(t.maybe_retune(3 * hour, &rules));
        assert!((t.probability("a", 0) - 0.25).abs() < 1e-9);
        // What it learnt survives a restart.
        let mut again = Tuner::new(hour, 1.0, 0);
        again.restore(&t.state());
        assert_eq!(again.state(), t.state());
        assert!((again.probability("a", 0) - 0.25).abs() < 1e-9);
    }
}
