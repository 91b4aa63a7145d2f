//! A batch: one profiler's aggregated samples for one window, as handed to a store.

use serde::{Deserialize, Serialize};

use crate::profile::{StackSample, ValueType};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Registered profiler name, e.g. `cpu`.
    pub profiler: String,
    pub value_type: ValueType,
    /// End of the window, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub samples: Vec<StackSample>,
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
