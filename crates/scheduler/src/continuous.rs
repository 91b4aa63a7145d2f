//! Continuous rules as slots, and the whole-host chain as windows, each drawn per host against
//! the tuned probability.
//!
//! A rule with run length `d` has slots of `10 × d`. At the start of each slot every host that
//! runs the service draws a number `u`; below the rule's probability `p`, it queues one run of
//! length `d` at an offset inside the slot (spreading the fleet's runs). A drawn run covers a
//! tenth of its slot, so its samples carry the weight `slot / (d × p)` = `10 / p`: weighted sums
//! estimate the true totals. The whole-host chain's windows tile time, so a drawn window's samples
//! carry `1 / p`.
//!
//! The draws have low variance: `u` is the per-host sequence `frac(offset + n × α)` over the slot
//! (or window) number `n`, with `α` the golden-ratio conjugate and `offset` a hash of (host,
//! rule). Over hosts, `offset` is uniform, so each slot is drawn with probability exactly `p`
//! (and `1 / p` stays unbiased); along one host the sequence is equidistributed with the lowest
//! discrepancy there is, so a host runs `n × p ± 2` times in `n` slots instead of a binomial
//! count. The draw is deterministic, so a plan and a host agree on it.

use baton_config::Config;

use crate::{JobRequest, Millis, Mode};

/// How much longer a slot is than one run: a host runs a rule at most 10% of the time.
pub const SLOT_RUNS: u64 = 10;

/// One continuous rule of one service, ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRule {
    pub service: String,
    pub rule: usize,
    pub profiler: String,
    pub duration_ms: Millis,
    pub slot_ms: Millis,
    pub frequency: Option<u64>,
    pub target_samples_per_hour: u64,
    salt: u64,
}

/// Every continuous rule of the config, in service order.
pub fn slot_rules(config: &Config) -> Vec<SlotRule> {
    let mut out = Vec::new();
    for (name, svc) in &config.services {
        for (i, c) in svc.continuous.iter().enumerate() {
            let d = (c.duration.as_millis() as Millis).max(1);
            out.push(SlotRule {
                service: name.clone(),
                rule: i,
                profiler: c.profiler.clone(),
                duration_ms: d,
                slot_ms: d * SLOT_RUNS,
                frequency: c.frequency,
                target_samples_per_hour: c.target_samples_per_hour,
                salt: baton_model::batch::fnv1a(&[name.as_bytes(), &i.to_le_bytes()]),
            });
        }
    }
    out
}

/// The golden-ratio conjugate `(√5 − 1) / 2` as a 64-bit fraction: the step of each host's
/// draw sequence.
const ALPHA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The salt of the whole-host chain's draws.
fn host_chain_salt() -> u64 {
    baton_model::batch::fnv1a(&[b"host chain"])
}

/// Draw number `n` of the sequence of (`host_key`, `salt`): a number in [0, 1) that is uniform
/// over hosts for each `n`, and equidistributed with low discrepancy along `n` for one host.
fn sequence(host_key: u64, salt: u64, n: u64) -> f64 {
    let offset = mix(host_key ^ mix(salt));
    let u = offset.wrapping_add(n.wrapping_mul(ALPHA));
    (u >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a host's whole-host chain stores window `window` (the window's start divided by the
/// window's length) at probability `p`. A stored window's samples carry the weight `1 / p`.
pub fn host_window_draw(host_key: u64, window: u64, p: f64) -> bool {
    p > 0.0 && sequence(host_key, host_chain_salt(), window) < p
}

/// The weight of the samples of a whole-host window stored at probability `p`: `1 / p`, as the
/// windows tile time.
pub fn host_window_weight(p: f64) -> f64 {
    1.0 / p
}

/// splitmix64's finaliser: a well-mixed 64-bit hash of one word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable key for a host name, for draws.
pub fn host_key(host: &str) -> u64 {
    baton_model::batch::fnv1a(&[host.as_bytes()])
}

impl SlotRule {
    /// The slot `now` falls in.
    pub fn slot_of(&self, now: Millis) -> u64 {
        now / self.slot_ms
    }

    /// The (service, rule) key the tuner uses.
    pub fn key(&self) -> (String, usize) {
        (self.service.clone(), self.rule)
    }

    /// The weight of the samples of a run drawn at probability `p`: `slot / (duration × p)`, as
    /// a run covers one `SLOT_RUNS`-th of its slot.
    pub fn weight(&self, p: f64) -> f64 {
        self.slot_ms as f64 / (self.duration_ms as f64 * p)
    }

    /// Whether this host runs the rule in `slot` at probability `p`.
    pub fn drawn(&self, host_key: u64, slot: u64, p: f64) -> bool {
        p > 0.0 && sequence(host_key, self.salt, slot) < p
    }

    /// This host's draw for `slot`: with probability `p`, a run of the rule somewhere in the
    /// slot (never before `now`), weighted [`SlotRule::weight`].
    pub fn draw(
        &self,
        host_key: u64,
        host: &str,
        slot: u64,
        p: f64,
        now: Millis,
    ) -> Option<JobRequest> {
        if !self.drawn(host_key, slot, p) {
            return None;
        }
        let h = mix(host_key ^ mix(slot ^ mix(self.salt)));
        let offset = (h >> 7) % (self.slot_ms - self.duration_ms).max(1);
        Some(JobRequest {
            profiler: self.profiler.clone(),
            host: host.to_string(),
            target: format!("service:{}", self.service),
            mode: Mode::Continuous {
                service: self.service.clone(),
                rule: self.rule,
            },
            duration_ms: self.duration_ms,
            frequency: self.frequency,
            priority: 0,
            force: false,
            owner: "continuous".into(),
            not_before: (slot * self.slot_ms + offset).max(now),
            weight: self.weight(p),
            options: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = "[services.a]\nselector = { comm = \"a\" }\ncontinuous = [{ profiler = \"cpu\", target_samples_per_hour = 1000, duration = \"6s\" }]\n";
        baton_config::load(
            &[baton_config::SourceFile {
                path: "a.toml".into(),
                text: text.into(),
            }],
            &["cpu"],
        )
        .expect("valid")
    }

    #[test]
    fn draws_hit_the_probability_and_carry_the_slot_weight() {
        let rules = slot_rules(&config());
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.slot_ms, 60_000);
        let mut hits = 0;
        for host in 0..20_000u64 {
            if let Some(req) = r.draw(mix(host), "h", 7, 0.25, 0) {
                hits += 1;
                // A 6 s run stands for its whole 60 s slot, once per 4 slots.
                assert_eq!(req.weight, 40.0);
                assert!(req.not_before >= 7 * 60_000);
                assert!(req.not_before + req.duration_ms <= 8 * 60_000);
            }
        }
        // 5,000 expected; a binomial's standard deviation here is about 61.
        assert!((4_700..5_300).contains(&hits), "{hits}");
        assert!(r.draw(1, "h", 1, 0.0, 0).is_none());
        assert_eq!(r.draw(1, "h", 1, 1.0, 0).map(|q| q.weight), Some(10.0));
        // The same host and slot always draw the same.
        assert_eq!(r.draw(42, "h", 3, 0.5, 0), r.draw(42, "h", 3, 0.5, 0));
    }

    /// Counts, for each of `hosts` hosts, the draws that hit in slots `first..first + n`.
    fn counts(hosts: u64, first: u64, n: u64, hit: impl Fn(u64, u64) -> bool) -> Vec<u64> {
        (0..hosts)
            .map(|h| {
                (first..first + n)
                    .filter(|s| hit(host_key(&format!("host-{h}")), *s))
                    .count() as u64
            })
            .collect()
    }

    #[test]
    fn each_slot_is_drawn_at_p_and_each_host_runs_n_p_within_two() {
        let r = &slot_rules(&config())[0];
        for p in [0.01, 0.1, 0.25, 0.5, 0.73, 0.999] {
            for (first, n) in [(0, 6), (29_000_000, 60), (123_456, 1_000)] {
                // Along one host: n × p ± 2, for slot rules and for host windows alike.
                let slots = counts(500, first, n, |k, s| r.drawn(k, s, p));
                let windows = counts(500, first, n, |k, s| host_window_draw(k, s, p));
                for c in slots.iter().chain(&windows) {
                    let want = n as f64 * p;
                    assert!(
                        (*c as f64 - want).abs() <= 2.0,
                        "p {p}, {n} slots from {first}: {c} runs, want {want}"
                    );
                }
            }
            // Across hosts, each single slot is drawn with probability p (binomial over hosts,
            // 20,000 of them: the standard deviation is at most 71).
            for slot in [0, 1, 17, 40_000_000] {
                let hits = counts(20_000, slot, 1, |k, s| r.drawn(k, s, p))
                    .iter()
                    .sum::<u64>();
                let want = 20_000.0 * p;
                assert!(
                    (hits as f64 - want).abs() <= 5.0 * (want * (1.0 - p)).sqrt().max(1.0),
                    "p {p}, slot {slot}: {hits}, want {want}"
                );
            }
        }
        // A host's rule draws and its window draws are not the same sequence.
        let k = host_key("host-1");
        assert_ne!(
            (0..64).map(|s| r.drawn(k, s, 0.5)).collect::<Vec<_>>(),
            (0..64)
                .map(|s| host_window_draw(k, s, 0.5))
                .collect::<Vec<_>>()
        );
        assert!(!host_window_draw(k, 3, 0.0));
        assert!(host_window_draw(k, 3, 1.0));
        assert_eq!(host_window_weight(0.25), 4.0);
    }
}
