//! Control-plane documents: the fleet server's hosts, unfinished runs, placements and tuner
//! state, kept as JSON per (kind, key), the latest record winning, so they outlive the server.

use std::collections::HashMap;

/// One control-plane document, as [`crate::Store::put_control`] stores it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ControlRecord {
    /// What the document is (`host`, `run`, `tuner`, …): records of one kind are read together.
    pub kind: String,
    /// Its name within the kind (a host name, a run id).
    pub key: String,
    pub json: String,
    /// When the writer made this version: of two records of one key the later one wins.
    pub updated_ms: i64,
    /// A tombstone: the key is gone (until a later live record).
    pub deleted: bool,
}

impl ControlRecord {
    /// A live record.
    pub fn new(kind: &str, key: &str, json: impl Into<String>, updated_ms: i64) -> ControlRecord {
        ControlRecord {
            kind: kind.to_string(),
            key: key.to_string(),
            json: json.into(),
            updated_ms,
            deleted: false,
        }
    }

    /// A tombstone for `kind`/`key`.
    pub fn deleted(kind: &str, key: &str, updated_ms: i64) -> ControlRecord {
        ControlRecord {
            deleted: true,
            ..ControlRecord::new(kind, key, "", updated_ms)
        }
    }
}

/// The records of one write that can win, one per (kind, key), in first-seen order: the latest
/// `updated_ms`, and of equal ones the last in the slice. Backends store only these, so that a
/// write never holds two versions of a key (neither engine orders rows within one insert).
pub(crate) fn winners(records: &[ControlRecord]) -> Vec<&ControlRecord> {
    let mut out: Vec<&ControlRecord> = Vec::with_capacity(records.len());
    let mut at: HashMap<(&str, &str), usize> = HashMap::new();
    for r in records {
        match at.get(&(r.kind.as_str(), r.key.as_str())) {
            Some(&i) if out[i].updated_ms > r.updated_ms => {}
            Some(&i) => out[i] = r,
            None => {
                at.insert((&r.kind, &r.key), out.len());
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_winner_per_key_latest_then_last() {
        let rs = [
            ControlRecord::new("run", "1", "a", 10),
            ControlRecord::new("run", "2", "b", 10),
            ControlRecord::new("run", "1", "c", 30),
            ControlRecord::new("run", "1", "stale", 20),
            ControlRecord::new("host", "1", "h", 5),
            ControlRecord::new("run", "1", "tie", 30),
        ];
        let w: Vec<(&str, &str, &str)> = winners(&rs)
            .iter()
            .map(|r| (r.kind.as_str(), r.key.as_str(), r.json.as_str()))
            .collect();
        assert_eq!(
            w,
            [("run", "1", "tie"), ("run", "2", "b"), ("host", "1", "h")]
        );
    }
}
