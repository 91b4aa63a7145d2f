//! Continuous rules as slots: each host draws once per slot against the tuned probability.
//!
//! A rule with run length `d` has slots of `10 × d`. At the start of each slot every host that
//! runs the service draws a number from a hash of (host, slot, rule); below the rule's probability
//! `p`, it queues one run of length `d` at an offset inside the slot (spreading the fleet's runs),
//! carrying the weight `1 / p`. The draw is deterministic, so a plan and a host agree on it.

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

    /// This host's draw for `slot`: with probability `p`, a run of the rule somewhere in the
    /// slot (never before `now`), weighted `1 / p`.
    pub fn draw(
        &self,
        host_key: u64,
        host: &str,
        slot: u64,
        p: f64,
        now: Millis,
    ) -> Option<JobRequest> {
        let h = mix(host_key ^ mix(slot ^ mix(self.salt)));
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        if p <= 0.0 || u >= p {
            return None;
        }
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
            weight: 1.0 / p,
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
    fn draws_hit_the_probability_and_carry_its_inverse_as_weight() {
        let rules = slot_rules(&config());
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.slot_ms, 60_000);
        let mut hits = 0;
        for host in 0..20_000u64 {
            if let Some(req) = r.draw(mix(host), "h", 7, 0.25, 0) {
                hits += 1;
                assert_eq!(req.weight, 4.0);
                assert!(req.not_before >= 7 * 60_000);
                assert!(req.not_before + req.duration_ms <= 8 * 60_000);
            }
        }
        // 5,000 expected; a binomial's standard deviation here is about 61.
        assert!((4_700..5_300).contains(&hits), "{hits}");
        assert!(r.draw(1, "h", 1, 0.0, 0).is_none());
        assert!(r.draw(1, "h", 1, 1.0, 0).is_some());
        // The same host and slot always draw the same.
        assert_eq!(r.draw(42, "h", 3, 0.5, 0), r.draw(42, "h", 3, 0.5, 0));
    }
}
