//! Write budgets: token buckets that guard the store, per key (profiler, or profiler/service).
//!
//! Over budget, a batch is down-sampled: each row is kept with probability `p = granted / rows`
//! and its weight multiplied by `1 / p`, so weighted sums stay unbiased. With no tokens at all,
//! the batch is refused. Either way the outcome is counted: a drop is never silent.

use std::collections::HashMap;

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
    pub stats: BudgetStats,
}

impl WriteBudgets {
    /// Decides the fate of a batch of `rows` rows under `key` at `per_minute` rows per minute.
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
            self.stats.batches_accepted += 1;
            Admission::Accept
        } else if granted == 0 {
            self.stats.batches_refused += 1;
            self.stats.rows_dropped += rows;
            Admission::Refuse
        } else {
            self.stats.batches_downsampled += 1;
            Admission::Downsample {
                keep_probability: granted as f64 / rows as f64,
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
