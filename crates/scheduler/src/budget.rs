//! Write budgets: token buckets that guard the store, per key (profiler, or profiler/service).
//!
//! Over budget, a batch is down-sampled: each row is kept with probability `p = granted / rows`
//! and its weight multiplied by `1 / p`, so weighted sums stay unbiased. With no tokens at all,
//! the batch is refused. Either way the outcome is counted: a drop is never silent.

use std::collections::{BTreeMap, HashMap};

use baton_model::Batch;

use crate::Millis;

/// A token bucket refilled at `per_minute` tokens per minute, holding at most one minute's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: f64,
    tokens: f64,
    last: Millis,
}

impl TokenBucket {
    pub fn new(per_minute: u64, now: Millis) -> TokenBucket {
        TokenBucket {
            per_minute: per_minute as f64,
            tokens: per_minute as f64,
            last: now,
        }
    }

    /// Takes up to `n` tokens; returns how many were granted.
    pub fn take(&mut self, n: u64, now: Millis) -> u64 {
        let elapsed = now.saturating_sub(self.last) as f64;
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_minute / 60_000.0).min(self.per_minute);
        let granted = (n as f64).min(self.tokens.floor()).max(0.0);
        self.tokens -= granted;
        granted as u64
    }
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// Store every row as it is.
    Accept,
    /// Keep each row with probability `keep_probability` and divide its weight by it.
    Downsample { keep_probability: f64 },
    /// Store nothing.
    Refuse,
}

/// Counters of what the budgets did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    pub batches_accepted: u64,
    pub batches_downsampled: u64,
    pub batches_refused: u64,
    pub rows_dropped: u64,
}

/// Budgets for every key, all with the same rate.
#[derive(Debug, Default)]
pub struct WriteBudgets {
    buckets: HashMap<String, TokenBucket>,
    /// Totals over every key.
    pub stats: BudgetStats,
    /// The same counters per key (`cpu`, `service:checkout`, …).
    pub per_key: BTreeMap<String, BudgetStats>,
}

impl WriteBudgets {
    fn count(&mut self, key: &str, f: impl Fn(&mut BudgetStats)) {
        f(&mut self.stats);
        f(self.per_key.entry(key.to_string()).or_default());
    }

    /// Decides the fate of a batch of `rows` rows under `key` at `per_minute` rows per minute.
    /// A refusal counts its rows as dropped; for a down-sampling the caller counts the rows it
    /// drops with [`WriteBudgets::dropped`].
    pub fn admit(&mut self, key: &str, rows: u64, per_minute: u64, now: Millis) -> Admission {
        if rows == 0 {
            return Admission::Accept;
        }
        let bucket = self
            .buckets
            .entry(key.to_string())
            .or_insert_with(|| TokenBucket::new(per_minute, now));
        bucket.per_minute = per_minute as f64;
        let granted = bucket.take(rows, now);
        if granted >= rows {
            self.count(key, |s| s.batches_accepted += 1);
            Admission::Accept
        } else if granted == 0 {
            self.count(key, |s| {
                s.batches_refused += 1;
                s.rows_dropped += rows;
            });
            Admission::Refuse
        } else {
            self.count(key, |s| s.batches_downsampled += 1);
            Admission::Downsample {
                keep_probability: granted as f64 / rows as f64,
            }
        }
    }

    /// Counts rows a down-sampling dropped under `key`.
    pub fn dropped(&mut self, key: &str, rows: u64) {
        self.count(key, |s| s.rows_dropped += rows);
    }

    /// Puts a whole batch through its budgets at ingest: first the budget of each service that
    /// has one (rows grouped by their `service` label, key `service:NAME`), then the profiler's
    /// budget (key: the profiler's name) over what is left. Down-sampled rows that survive have
    /// their weight divided by the keep probability; refused and dropped rows are counted.
    pub fn admit_batch(
        &mut self,
        batch: &mut Batch,
        service_budget: impl Fn(&str) -> Option<u64>,
        profiler_budget: u64,
        now: Millis,
    ) {
        let salt = batch.ts_ms as u64;
        let mut groups: BTreeMap<String, u64> = BTreeMap::new();
        for s in &batch.samples {
            if let Some(svc) = s.labels.get("service") {
                if service_budget(svc).is_some() {
                    *groups.entry(svc.clone()).or_default() += 1;
                }
            }
        }
        let mut fate: HashMap<String, Admission> = HashMap::new();
        for (svc, rows) in &groups {
            let budget = service_budget(svc).unwrap_or(u64::MAX);
            let a = self.admit(&format!("service:{svc}"), *rows, budget, now);
            fate.insert(svc.clone(), a);
        }
        let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
        let mut i = 0u64;
        batch.retain_samples(|s| {
            i += 1;
            let Some(svc) = s.labels.get("service") else {
                return true;
            };
            match fate.get(svc) {
                None | Some(Admission::Accept) => true,
                Some(Admission::Refuse) => false,
                Some(Admission::Downsample { keep_probability }) => {
                    s.weight /= keep_probability;
                    let keep = keep_row(salt, i, *keep_probability);
                    if !keep {
                        *dropped.entry(format!("service:{svc}")).or_default() += 1;
                    }
                    keep
                }
            }
        });
        for (key, n) in dropped {
            self.dropped(&key, n);
        }
        let rows = batch.samples.len() as u64;
        let key = batch.profiler.clone();
        match self.admit(&key, rows, profiler_budget, now) {
            Admission::Accept => {}
            Admission::Refuse => {
                batch.samples.clear();
                batch.spans.clear();
            }
            Admission::Downsample { keep_probability } => {
                let salt = salt.rotate_left(17);
                let mut i = 0u64;
                batch.retain_samples(|s| {
                    i += 1;
                    s.weight /= keep_probability;
                    keep_row(salt, i, keep_probability)
                });
                self.dropped(&key, rows - batch.samples.len() as u64);
            }
        }
    }
}

/// Whether row `index` of a batch stamped `salt` survives down-sampling at probability `p`:
/// a deterministic, well-mixed draw, so reruns agree.
pub fn keep_row(salt: u64, index: u64, p: f64) -> bool {
    let mut z = salt ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_a_minute() {
        let mut b = TokenBucket::new(600, 0);
        assert_eq!(b.take(1000, 0), 600);
        assert_eq!(b.take(100, 1_000), 10, "10 rows per second");
        assert_eq!(
            b.take(10_000, 3_600_000),
            600,
            "never more than a minute's worth"
        );
    }

    #[test]
    fn over_budget_is_downsampled_then_refused_and_counted() {
        let mut w = WriteBudgets::default();
        assert_eq!(w.admit("cpu", 50, 100, 0), Admission::Accept);
        match w.admit("cpu", 100, 100, 0) {
            Admission::Downsample { keep_probability } => {
                assert!((keep_probability - 0.5).abs() < 1e-9)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w.admit("cpu", 10, 100, 0), Admission::Refuse);
        assert_eq!(
            w.admit("other", 10, 100, 0),
            Admission::Accept,
            "budgets are per key"
        );
        assert_eq!(
            w.stats,
            BudgetStats {
                batches_accepted: 2,
                batches_downsampled: 1,
                batches_refused: 1,
                rows_dropped: 10
            }
        );
        assert_eq!(w.per_key["other"].batches_accepted, 1);
        assert_eq!(w.per_key["cpu"].batches_refused, 1);
    }

    fn batch(rows: &[(&str, usize)]) -> Batch {
        let mut samples = Vec::new();
        for (svc, n) in rows {
            for _ in 0..*n {
                let mut labels = baton_model::Labels::new();
                if !svc.is_empty() {
                    labels.insert("service".into(), svc.to_string());
                }
                samples.push(baton_model::StackSample {
                    stack: Vec::new(),
                    labels,
                    value: 1,
                    weight: 1.0,
                    value_index: 0,
                });
            }
        }
        Batch {
            profiler: "cpu".into(),
            value_type: baton_model::ValueType::cpu_nanoseconds(),
            more_value_types: Vec::new(),
            ts_ms: 1_234,
            samples,
            histograms: Vec::new(),
            spans: Vec::new(),
        }
    }

    fn weighted(b: &Batch, svc: &str) -> f64 {
        b.samples
            .iter()
            .filter(|s| s.labels.get("service").map(String::as_str).unwrap_or("") == svc)
            .map(|s| s.value as f64 * s.weight)
            .sum()
    }

    #[test]
    fn a_service_over_its_budget_is_downsampled_alone_and_stays_unbiased() {
        let mut w = WriteBudgets::default();
        let budget = |s: &str| (s == "noisy").then_some(1_000);
        let mut b = batch(&[("noisy", 10_000), ("quiet", 500), ("", 300)]);
        w.admit_batch(&mut b, budget, 1_000_000, 0);
        // The noisy service keeps about a tenth of its rows, each weighing about 10.
        let kept = b
            .samples
            .iter()
            .filter(|s| s.labels.get("service").is_some_and(|v| v == "noisy"))
            .count();
        assert!((800..1_200).contains(&kept), "{kept}");
        // Unbiased: the kept rows weigh 10 each (sd of the kept count is about 3%).
        assert!((weighted(&b, "noisy") / 10_000.0 - 1.0).abs() < 0.15);
        // Nobody else lost a row.
        assert_eq!(weighted(&b, "quiet"), 500.0);
        assert_eq!(weighted(&b, ""), 300.0);
        let noisy = w.per_key["service:noisy"];
        assert_eq!(noisy.batches_downsampled, 1);
        assert_eq!(noisy.rows_dropped, 10_000 - kept as u64);
        assert_eq!(w.per_key["cpu"].batches_accepted, 1);
        // The next batch within the minute finds no tokens: refused, and counted.
        let mut b = batch(&[("noisy", 100), ("quiet", 5)]);
        w.admit_batch(&mut b, budget, 1_000_000, 1);
        assert_eq!(b.samples.len(), 5);
        assert_eq!(w.per_key["service:noisy"].batches_refused, 1);
        assert_eq!(
            w.per_key["service:noisy"].rows_dropped,
            10_000 - kept as u64 + 100
        );
    }

    #[test]
    fn a_profiler_over_the_host_wide_budget_is_downsampled_with_raised_weights() {
        let mut w = WriteBudgets::default();
        let mut b = batch(&[("", 10_000)]);
        w.admit_batch(&mut b, |_| None, 1_000, 0);
        let kept = b.samples.len();
        assert!((800..1_200).contains(&kept), "{kept}");
        // Every kept row stands for the ten it was drawn from.
        assert!(b.samples.iter().all(|s| (s.weight - 10.0).abs() < 1e-9));
        assert!((weighted(&b, "") / 10_000.0 - 1.0).abs() < 0.15);
        assert_eq!(w.per_key["cpu"].batches_downsampled, 1);
        assert_eq!(w.per_key["cpu"].rows_dropped, 10_000 - kept as u64);
    }

    #[test]
    fn downsampling_keeps_weighted_sums_unbiased() {
        let p = 0.1;
        let n = 200_000u64;
        let kept = (0..n).filter(|i| keep_row(42, *i, p)).count() as f64;
        let weighted = kept / p;
        assert!(
            (weighted / n as f64 - 1.0).abs() < 0.02,
            "weighted {weighted} vs {n}"
        );
    }
}
