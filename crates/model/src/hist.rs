//! Histograms: distributions a profiler measures (latencies, sizes), as power-of-two buckets.
//!
//! BPF counts a value `v` in bucket `floor(log2(v))` (bucket 0 also holds 0), the cheapest
//! bucketing there is in BPF. A bucket is stored by its inclusive upper bound `le`, so a finer
//! scheme can be added later and still merge with these by bound.

use serde::{Deserialize, Serialize};

use crate::profile::Labels;

/// One bucket: `count` values in `[lo, le]` (`lo` is the previous bucket's `le + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le: u64,
    /// Weighted count (values sampled 1 in N count N times).
    pub count: f64,
}

/// A distribution of one thing (a syscall's latency, a function's) over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// What it measures, e.g. `syscall_latency`, `call_latency`, `futex_wait`.
    pub name: String,
    /// Unit of the values, e.g. `nanoseconds`, `bytes`.
    pub unit: String,
    /// What the distribution is of within the profiler: a syscall, a function, an operation.
    pub key: String,
    pub labels: Labels,
    /// Buckets in increasing `le`, empty ones left out.
    pub buckets: Vec<Bucket>,
}

/// The inclusive upper bound of power-of-two bucket `i`: `[2^i, 2^(i+1) - 1]`, bucket 0 `[0, 1]`.
pub fn log2_le(i: u32) -> u64 {
    if i >= 63 {
        u64::MAX
    } else {
        (1u64 << (i + 1)) - 1
    }
}

/// The lower bound of the bucket whose upper bound is `le`, for power-of-two buckets.
fn lower_bound(le: u64) -> u64 {
    if le <= 1 {
        0
    } else {
        le / 2 + 1
    }
}

impl Histogram {
    pub fn new(name: &str, unit: &str, key: &str, labels: Labels) -> Histogram {
        Histogram {
            name: name.into(),
            unit: unit.into(),
            key: key.into(),
            labels,
            buckets: Vec::new(),
        }
    }

    /// Adds `count` values to the bucket bounded by `le`.
    pub fn add(&mut self, le: u64, count: f64) {
        match self.buckets.binary_search_by(|b| b.le.cmp(&le)) {
            Ok(i) => self.buckets[i].count += count,
            Err(i) => self.buckets.insert(i, Bucket { le, count }),
        }
    }

    /// Adds every bucket of `other` (of the same name and unit) to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for b in &other.buckets {
            self.add(b.le, b.count);
        }
    }

    /// Number of values.
    pub fn total(&self) -> f64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut seen = 0.0;
        for b in &self.buckets {
            if seen + b.count >= rank {
                let lo = lower_bound(b.le) as f64;
                let frac = if b.count > 0.0 {
                    (rank - seen) / b.count
                } else {
                    0.0
                };
                return Some((lo + (b.le as f64 - lo) * frac).round() as u64);
            }
            seen += b.count;
        }
        self.buckets.last().map(|b| b.le)
    }

    /// The weighted count of values in `[lo, hi]`, counting whole buckets that lie inside it.
    pub fn count_between(&self, lo: u64, hi: u64) -> f64 {
        self.buckets
            .iter()
            .filter(|b| lower_bound(b.le) >= lo && b.le <= hi)
            .map(|b| b.count)
            .sum()
    }

    /// A text rendering in the manner of bcc's histograms: one row per bucket with a bar.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let max = self.buckets.iter().map(|b| b.count).fold(0.0, f64::max);
        let unit = short_unit(&self.unit);
        out.push_str(&format!(
            "{:>24} : {:<10} {}\n",
            format!("{unit} range"),
            "count",
            "distribution"
        ));
        for b in &self.buckets {
            let width = if max > 0.0 {
                ((b.count / max) * 40.0).round() as usize
            } else {
                0
            };
            out.push_str(&format!(
                "{:>11} -> {:<10}: {:<10} |{:<40}|\n",
                lower_bound(b.le),
                b.le,
                format_count(b.count),
                "*".repeat(width)
            ));
        }
        out
    }
}

fn short_unit(unit: &str) -> &str {
    match unit {
        "nanoseconds" => "ns",
        "bytes" => "bytes",
        other => other,
    }
}

fn format_count(c: f64) -> String {
    if (c - c.round()).abs() < 1e-9 {
        format!("{}", c as u64)
    } else {
        format!("{c:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram {
        let mut h = Histogram::new("t", "nanoseconds", "", Labels::new());
        for &v in values {
            let i = if v == 0 { 0 } else { 63 - v.leading_zeros() };
            h.add(log2_le(i), 1.0);
        }
        h
    }

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(log2_le(0), 1);
        assert_eq!(log2_le(1), 3);
        assert_eq!(log2_le(10), 2047);
        assert_eq!(lower_bound(2047), 1024);
        assert_eq!(lower_bound(1), 0);
        let h = hist(&[0, 1, 2, 3, 1000, 1023, 1024]);
        let les: Vec<u64> = h.buckets.iter().map(|b| b.le).collect();
        assert_eq!(les, vec![1, 3, 1023, 2047]);
        assert_eq!(h.total(), 7.0);
        assert_eq!(h.count_between(512, 1023), 2.0);
    }

    #[test]
    fn quantiles_fall_in_the_right_bucket_and_merge_adds() {
        let mut h = hist(&[100; 90]);
        h.merge(&hist(&[100_000; 10]));
        let p50 = h.quantile(0.5).unwrap_or(0);
        assert!((64..=127).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap_or(0);
        assert!((65_536..=131_071).contains(&p99), "{p99}");
        assert_eq!(h.total(), 100.0);
        assert!(h.render().contains("65536 -> 131071"), "{}", h.render());
    }
}
