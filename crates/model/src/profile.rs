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
    pub fn new(kind: &str, unit: &str) -> Self {
        ValueType {
            kind: kind.into(),
            unit: unit.into(),
        }
    }

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
    /// Which of its batch's or profile's value types `value` is: 0 is the primary one, `i > 0`
    /// is `more_value_types[i - 1]` (a profiler that measures several things per stack, such as
    /// `malloc`'s bytes, counts and live bytes, gives one sample per stack and type).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_index: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
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
    /// Further value types, for samples whose `value_index` is above 0. Only pprof carries them
    /// all; the other views take one type at a time ([`Profile::select`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_value_types: Vec<ValueType>,
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
            more_value_types: Vec::new(),
            period_ns: None,
            event: None,
            start_unix_ns: 0,
            duration_ns: 0,
            samples: Vec::new(),
        }
    }

    /// Sum of `value * weight` over the samples of the primary value type.
    pub fn total(&self) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.value_index == 0)
            .map(StackSample::weighted)
            .sum()
    }

    /// Every value type, the primary one first.
    pub fn value_types(&self) -> Vec<&ValueType> {
        std::iter::once(&self.value_type)
            .chain(self.more_value_types.iter())
            .collect()
    }

    /// The profile of one value type, by kind (`alloc_bytes`), made the primary one; `None`
    /// names the primary type. Errors list the kinds there are.
    pub fn select(mut self, kind: Option<&str>) -> Result<Profile, String> {
        let index = match kind {
            None => 0,
            Some(k) => self
                .value_types()
                .iter()
                .position(|t| t.kind == k)
                .ok_or_else(|| {
                    format!(
                        "no value {k:?} in this profile; it has {}",
                        self.value_types()
                            .iter()
                            .map(|t| t.kind.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?,
        };
        if index > 0 {
            self.value_type = self.more_value_types[index - 1].clone();
            // A period describes the primary (sampled) value only.
            self.period_ns = None;
        }
        self.more_value_types.clear();
        self.samples.retain(|s| usize::from(s.value_index) == index);
        for s in &mut self.samples {
            s.value_index = 0;
        }
        Ok(self)
    }

    /// Number of raw samples behind a weighted value, when the period is known.
    pub fn as_sample_count(&self, weighted: f64) -> f64 {
        match self.period_ns {
            Some(p) if p > 0 => weighted / p as f64,
            _ => weighted,
        }
    }
}
