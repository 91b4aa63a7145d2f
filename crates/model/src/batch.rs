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
        }
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
    fn fnv_separates_parts() {
        assert_ne!(super::fnv1a(&[b"ab", b"c"]), super::fnv1a(&[b"a", b"bc"]));
        assert_eq!(super::fnv1a(&[b"x"]), super::fnv1a(&[b"x"]));
    }
}
