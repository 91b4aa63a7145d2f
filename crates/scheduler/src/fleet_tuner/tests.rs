//! Unit tests of the fleet tuner: one-step convergence from above, hosts joining and leaving,
//! periods without hits, and state kept across a restart.

use super::*;
use crate::continuous::{host_key, host_window_draw};

const HOUR: Millis = 3_600_000;
const SLOT: Millis = 10_000;

fn key() -> RuleKey {
    ("svc".to_string(), 0)
}

fn rule(target: u64) -> TunedRule {
    TunedRule {
        key: key(),
        target_per_hour: target,
        draws_per_host_per_hour: HOUR as f64 / SLOT as f64,
    }
}

/// A fleet of hosts, each yielding its own samples per hit, drawing once per slot with the
/// low-variance draw; returns the samples stored in each hour and `p` after each slot.
struct Fleet {
    hosts: Vec<(String, u64)>,
}

impl Fleet {
    fn run(
        &self,
        t: &mut FleetTuner,
        rules: &[TunedRule],
        slots: std::ops::Range<u64>,
    ) -> (Vec<u64>, Vec<f64>) {
        let mut per_hour = Vec::new();
        let mut ps = Vec::new();
        t.set_population(&key(), self.hosts.len() as u64, slots.start * SLOT);
        for slot in slots {
            let p = t.probability(&key());
            let end = (slot + 1) * SLOT;
            let hour = (slot * SLOT / HOUR) as usize;
            if per_hour.len() <= hour {
                per_hour.resize(hour + 1, 0);
            }
            for (name, y) in &self.hosts {
                if host_window_draw(host_key(name), slot, p) {
                    t.observe(name, &key(), 1, *y, end);
                    per_hour[hour] += y;
                }
            }
            t.maybe_retune(end, rules);
            ps.push(t.probability(&key()));
        }
        (per_hour, ps)
    }
}

fn three_hosts() -> Fleet {
    Fleet {
        hosts: vec![("a".into(), 90), ("b".into(), 100), ("c".into(), 110)],
    }
}

#[test]
fn a_fleet_converging_from_p1_reaches_the_target_from_above_in_one_step_and_stays() {
    // Three hosts yielding 100 samples per hit on average, 360 slots an hour: 108,000 an hour
    // at p = 1. The target is a third of that.
    let target = 36_000;
    let rules = [rule(target)];
    let mut t = FleetTuner::new(HOUR, 1.0, 0);
    let (per_hour, ps) = three_hosts().run(&mut t, &rules, 0..6 * 360);
    let exact = fleet_probability(target, 3, 360.0, 100.0);
    assert!((exact - 1.0 / 3.0).abs() < 1e-12);
    // The first slot's hits end, and the quick re-tune lands on the formula's p at once, long
    // before the hour is over.
    assert_eq!(ps[0], exact);
    // It never goes below what the formula gives from a yield it learnt, and stays close.
    for (i, p) in ps.iter().enumerate() {
        assert!(
            (p / exact - 1.0).abs() < 0.05,
            "slot {i}: p {p}, want {exact}"
        );
    }
    // From above: the first hour holds the one slot at p = 1; every hour is within 15% of the
    // target (here within 3%: each host runs n × p ± 2 times).
    assert!(per_hour[0] >= target, "{per_hour:?}");
    for (h, n) in per_hour.iter().enumerate() {
        let r = *n as f64 / target as f64;
        assert!((0.97..=1.05).contains(&r), "hour {h}: {n} stored ({r:.3})");
    }
}

#[test]
fn a_host_that_joins_or_leaves_rescales_p_at_once() {
    let target = 36_000;
    let rules = [rule(target)];
    let mut t = FleetTuner::new(HOUR, 1.0, 0);
    three_hosts().run(&mut t, &rules, 0..360);
    let y = t
        .status_of(&key())
        .and_then(|s| s.yield_per_hit)
        .expect("yield");
    // A fourth host joins: p follows the formula for four hosts without waiting for a period.
    let mut four = three_hosts();
    four.hosts.push(("d".into(), 100));
    t.set_population(&key(), 4, 360 * SLOT);
    assert_eq!(
        t.probability(&key()),
        fleet_probability(target, 4, 360.0, y)
    );
    // The next hour stores the target again.
    let (per_hour, _) = four.run(&mut t, &rules, 360..720);
    let r = per_hour[1] as f64 / target as f64;
    assert!((0.95..=1.05).contains(&r), "{per_hour:?}");
    // Two leave: p rises to match, and so does each host's share.
    t.set_population(&key(), 2, 720 * SLOT);
    let y = t
        .status_of(&key())
        .and_then(|s| s.yield_per_hit)
        .expect("yield");
    assert_eq!(
        t.probability(&key()),
        fleet_probability(target, 2, 360.0, y)
    );
    // No host at all: p stays as it was.
    let before = t.probability(&key());
    t.set_population(&key(), 0, 720 * SLOT);
    assert_eq!(t.probability(&key()), before);
}

#[test]
fn periods_without_hits_keep_the_yield_and_unknown_yields_look_harder() {
    let rules = [rule(1_000), TunedRule::host_chain(5_000, 10_000)];
    let chain = host_chain_key();
    let mut t = FleetTuner::new(HOUR, 0.01, 0);
    t.set_population(&key(), 10, 0);
    t.set_population(&chain, 10, 0);
    // No hit: nothing happens before the period's end.
    assert!(!t.maybe_retune(HOUR / 2, &rules));
    // The period ends without a hit: no yield is known, so both look harder.
    assert!(t.maybe_retune(HOUR, &rules));
    assert_eq!(t.probability(&key()), 0.04);
    assert_eq!(t.probability(&chain), 0.04);
    // Hits of 50 samples: once each of the ten hosts could have reported one, the rule is
    // re-tuned at once (quick); the chain, with no hit, is not.
    for h in 0..9 {
        t.observe(&format!("h{h}"), &key(), 1, 50, HOUR + 1);
    }
    assert!(!t.maybe_retune(HOUR + 2, &rules));
    t.observe("h9", &key(), 1, 50, HOUR + 3);
    assert!(t.maybe_retune(HOUR + 4, &rules));
    let p = fleet_probability(1_000, 10, 360.0, 50.0);
    assert_eq!(t.probability(&key()), p);
    assert_eq!(t.probability(&chain), 0.04);
    // A whole period with no hit keeps the yield, so p stays.
    assert!(t.maybe_retune(2 * HOUR, &rules));
    assert_eq!(t.probability(&key()), p);
    // A changed target applies at once.
    let doubled = [rule(2_000), rules[1].clone()];
    t.maybe_retune(2 * HOUR + 1, &doubled);
    assert_eq!(
        t.probability(&key()),
        fleet_probability(2_000, 10, 360.0, 50.0)
    );
    // Status shows what was counted.
    let s = t.status_of(&key()).expect("status");
    assert_eq!(
        s.total,
        Counts {
            hits: 10,
            samples: 500
        }
    );
    assert_eq!((s.hosts, s.hosts_reporting), (10, 0));
    assert_eq!(t.probabilities().len(), 2);
}

#[test]
fn what_the_tuner_learnt_survives_a_restart() {
    let rules = [rule(36_000)];
    let mut t = FleetTuner::new(HOUR, 1.0, 0);
    three_hosts().run(&mut t, &rules, 0..100);
    let text = serde_json::to_string(&t.state()).expect("json");
    let mut again = FleetTuner::new(HOUR, 1.0, 5);
    again.restore(&serde_json::from_str(&text).expect("state"));
    assert_eq!(again.state(), t.state());
    assert_eq!(again.probabilities(), t.probabilities());
    // The next re-tunes agree, too.
    t.maybe_retune(HOUR, &rules);
    again.maybe_retune(HOUR, &rules);
    assert_eq!(again.probabilities(), t.probabilities());
    // An older single-host file (`yield_per_run`, no counts) still reads.
    let old: Vec<RuleState> = serde_json::from_str(
        r#"[{"service":"svc","rule":0,"probability":0.5,"yield_per_run":12.0}]"#,
    )
    .expect("old state");
    assert_eq!(old[0].yield_per_hit, Some(12.0));
}

#[test]
fn a_period_of_few_hits_leans_on_the_past_and_one_of_many_stands_on_its_own() {
    let r = [rule(36_000)];
    let mut t = FleetTuner::new(HOUR, 1.0, 0);
    t.set_population(&key(), 10, 0);
    // The first period: 100 hits of 50 samples.
    t.observe("h0", &key(), 100, 5_000, 0);
    assert!(t.maybe_retune(HOUR, &r));
    assert_eq!(
        t.status_of(&key()).and_then(|s| s.yield_per_hit),
        Some(50.0)
    );
    // A period of 4 hits of 80: the estimate leans on the 15 hits' worth of the past.
    t.observe("h0", &key(), 4, 320, HOUR);
    assert!(t.maybe_retune(2 * HOUR, &r));
    let y = t
        .status_of(&key())
        .and_then(|s| s.yield_per_hit)
        .expect("yield");
    assert!((y - (50.0 * 15.0 + 320.0) / 19.0).abs() < 1e-9, "{y}");
    // A period of 1,000 hits of 80 stands nearly on its own.
    t.observe("h0", &key(), 1_000, 80_000, 2 * HOUR);
    assert!(t.maybe_retune(3 * HOUR, &r));
    let y = t
        .status_of(&key())
        .and_then(|s| s.yield_per_hit)
        .expect("yield");
    assert!(y > 79.5, "{y}");
}
