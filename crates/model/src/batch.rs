//! A batch: one profiler's aggregated samples for one window, as handed to a store.

use serde::{Deserialize, Serialize};

use crate::hist::Histogram;
use crate::profile::{StackSample, ValueType};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Registered profiler name, e.g. `cpu`.
    pub profiler: String,
    /// The value type of samples with `value_index` 0.
    pub value_type: ValueType,
    /// The value types of samples with `value_index` 1, 2, ….
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_value_types: Vec<ValueType>,
    /// End of the window, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub samples: Vec<StackSample>,
    /// Latency and size distributions the profiler measured in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histograms: Vec<Histogram>,
    /// Timed events of the window for the timeline: CPU samples, blocks, requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<Span>,
}

/// What a [`Span`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// One CPU sample (a tick on the thread's lane); its duration is the sampling period.
    Cpu,
    /// A block off CPU, from switch-out to switch-in.
    Offcpu,
    /// A request, from its begin probe to its end probe (the `latency` profiler).
    Request,
}

impl SpanKind {
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Cpu => "cpu",
            SpanKind::Offcpu => "offcpu",
            SpanKind::Request => "request",
        }
    }

    pub fn parse(s: &str) -> Option<SpanKind> {
        match s {
            "cpu" => Some(SpanKind::Cpu),
            "offcpu" => Some(SpanKind::Offcpu),
            "request" => Some(SpanKind::Request),
            _ => None,
        }
    }
}

/// One interval on a thread's timeline, with wall-clock times in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub kind: SpanKind,
    pub pid: u32,
    pub tid: u32,
    /// Start, microseconds since the Unix epoch.
    pub start_us: i64,
    pub dur_us: i64,
    /// The batch sample whose stack (and labels) this span has, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
    /// What to show for it: the block's state, the request's id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
}

impl Batch {
    /// An empty batch of `profiler` with its value types (primary first).
    pub fn new(profiler: &str, mut types: Vec<ValueType>, ts_ms: i64) -> Batch {
        let value_type = if types.is_empty() {
            ValueType::new("samples", "count")
        } else {
            types.remove(0)
        };
        Batch {
            profiler: profiler.into(),
            value_type,
            more_value_types: types,
            ts_ms,
            samples: Vec::new(),
            histograms: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// Keeps the samples `keep` says to, and the spans of those samples (spans without a
    /// sample stay); span indexes follow the samples that remain.
    pub fn retain_samples(&mut self, mut keep: impl FnMut(&mut StackSample) -> bool) {
        let mut new_index: Vec<Option<u32>> = Vec::with_capacity(self.samples.len());
        let mut next = 0u32;
        for s in self.samples.iter_mut() {
            if keep(s) {
                new_index.push(Some(next));
                next += 1;
            } else {
                new_index.push(None);
            }
        }
        let mut i = 0;
        self.samples.retain(|_| {
            i += 1;
            new_index[i - 1].is_some()
        });
        self.spans.retain_mut(|sp| match sp.sample {
            None => true,
            Some(k) => match new_index.get(k as usize).copied().flatten() {
                Some(n) => {
                    sp.sample = Some(n);
                    true
                }
                None => false,
            },
        });
    }

    /// Every value type, the primary one first.
    pub fn value_types(&self) -> Vec<&ValueType> {
        std::iter::once(&self.value_type)
            .chain(self.more_value_types.iter())
            .collect()
    }

    /// The value type of one of this batch's samples.
    pub fn value_type_of(&self, s: &StackSample) -> &ValueType {
        match s.value_index {
            0 => &self.value_type,
            i => self
                .more_value_types
                .get(usize::from(i) - 1)
                .unwrap_or(&self.value_type),
        }
    }
}

/// 64-bit FNV-1a: stable across runs and hosts, used for frame and stack ids.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn retained_samples_keep_their_spans() {
        use super::{Batch, Span, SpanKind};
        use crate::profile::{StackSample, ValueType};
        let mut b = Batch::new("cpu", vec![ValueType::cpu_nanoseconds()], 0);
        for v in 0..4 {
            b.samples.push(StackSample {
                stack: Vec::new(),
                labels: Default::default(),
                value: v,
                weight: 1.0,
                value_index: 0,
            });
        }
        let span = |sample| Span {
            kind: SpanKind::Cpu,
            pid: 1,
            tid: 1,
            start_us: 0,
            dur_us: 1,
            sample,
            label: String::new(),
        };
        b.spans = vec![span(Some(1)), span(Some(2)), span(Some(3)), span(None)];
        b.retain_samples(|s| s.value != 2);
        let kept: Vec<Option<u32>> = b.spans.iter().map(|s| s.sample).collect();
        assert_eq!(kept, [Some(1), Some(2), None]);
        assert_eq!(b.samples[2].value, 3);
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(super::fnv1a(&[b"ab", b"c"]), super::fnv1a(&[b"a", b"bc"]));
        assert_eq!(super::fnv1a(&[b"x"]), super::fnv1a(&[b"x"]));
    }
}
