//! ClickHouse's control plane: documents in a `ReplacingMergeTree(updated_ms)` keyed by
//! (kind, key), read with `FINAL` so that the answer is the merged one before any merge ran.

use super::http::Http;
use super::tsv::{push_row, s};
use crate::control::winners;
use crate::query::quote;
use crate::{ControlRecord, StoreError};

impl Http {
    /// One INSERT of each key's winning record in `records`.
    pub(super) fn put_control(&mut self, records: &[ControlRecord]) -> Result<(), StoreError> {
        let mut text = String::new();
        let won = winners(records);
        for r in &won {
            let fields = [
                s(&r.kind),
                s(&r.key),
                s(r.updated_ms),
                s(u8::from(r.deleted)),
                s(&r.json),
            ];
            push_row(&mut text, &fields);
        }
        self.insert(
            "control (kind, key, updated_ms, deleted, json)",
            &text,
            won.len(),
        )
    }

    /// `FINAL` merges the rows of each key as a merge would: the greatest `updated_ms`, and of
    /// equal ones the row of the latest insert. Only `kind`, a sort-key column that all
    /// versions of a key share, is filtered in SQL, so the filter cannot drop a newer version
    /// before the merge (a tombstone is dropped after it, here).
    pub(super) fn control(&self, kind: &str) -> Result<Vec<ControlRecord>, StoreError> {
        let rows = self.rows(&format!(
            "SELECT key, json, updated_ms, deleted FROM {}.control FINAL WHERE kind = {} ORDER BY key",
            self.db(),
            quote(kind)
        ))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let text = |i: usize| r.get(i).cloned().flatten();
                if text(3)? != "0" {
                    return None;
                }
                Some(ControlRecord {
                    kind: kind.to_string(),
                    key: text(0)?,
                    json: text(1)?,
                    updated_ms: text(2)?.parse().ok()?,
                    deleted: false,
                })
            })
            .collect())
    }
}
