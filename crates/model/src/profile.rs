//! An aggregated profile: weighted samples of stacks with labels. Every sum is `value * weight`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::frame::Frame;

/// Sample labels. The well-known keys are `pid`, `tid`, `comm`, `exe` and `cgroup`.
pub type Labels = BTreeMap<String, String>;

/// What a sample's value measures, as pprof names it (`cpu` / `nanoseconds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueType {
    pub kind: String,
    pub unit: String,
}

impl ValueType {
    pub fn cpu_nanoseconds() -> Self {
        ValueType {
            kind: "cpu".into(),
            unit: "nanoseconds".into(),
        }
    }

    /// Time threads spent blocked (off CPU).
    pub fn offcpu_nanoseconds() -> Self {
        ValueType {
            kind: "offcpu".into(),
            unit: "nanoseconds".into(),
        }
    }
}

/// One aggregated row: a stack (leaf first), its labels, its value and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackSample {
    /// Frames, leaf first, as pprof orders them.
    pub stack: Vec<Frame>,
    pub labels: Labels,
    pub value: i64,
    /// Inverse of the probability that this sample was taken; 1.0 when nothing was dropped.
    pub weight: f64,
}

impl StackSample {
    pub fn weighted(&self) -> f64 {
        self.value as f64 * self.weight
    }
}

/// A profile ready for export or display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub value_type: ValueType,
    /// Nanoseconds between samples, when one sampling period applies to the whole profile.
    pub period_ns: Option<u64>,
    /// The perf event that drove sampling (`cycles`, `cpu-clock`), when known.
    pub event: Option<String>,
    pub start_unix_ns: i64,
    pub duration_ns: i64,
    pub samples: Vec<StackSample>,
}

impl Profile {
    pub fn new(value_type: ValueType) -> Self {
        Profile {
            value_type,
            period_ns: None,
            event: None,
            start_unix_ns: 0,
            duration_ns: 0,
            samples: Vec::new(),
        }
    }

    /// Sum of `value * weight` over all samples.
    pub fn total(&self) -> f64 {
        self.samples.iter().map(StackSample::weighted).sum()
    }

    /// Number of raw samples behind a weighted value, when the period is known.
    pub fn as_sample_count(&self, weighted: f64) -> f64 {
        match self.period_ns {
            Some(p) if p > 0 => weighted / p as f64,
            _ => weighted,
        }
    }
}
