//! Write budgets: every batch the driver stores is labelled with its services (and read for
//! live-heap growth), then admitted
//! through each service's budget and the host's (rows per minute): accepted, down-sampled with
//! raised weights, or refused. Each outcome is counted in `/metrics` and, per budget, in
//! `/api/v1/status`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use baton_agent::WindowReport;
use baton_model::sync;
use baton_server::api::BudgetStatus;

use super::Driver;
use crate::scheduler_clock as clock;

impl Driver {
    /// Labels a batch's rows with their service, then writes it through the write budgets (each
    /// service's, then its profiler's). Returns the sample rows written.
    pub(super) fn store_batch(&mut self, mut r: WindowReport) -> u64 {
        let config = self.config();
        if let Some(c) = &config {
            baton_agent::attribute::attribute(c, &mut r.batch);
            // Every row, before any budget thins them: live-heap growth for `heap_growth`.
            self.triggers.heap.window(&r.batch);
        }
        let per_minute = config
            .as_ref()
            .map(|c| c.host.write_budget_rows_per_minute)
            .unwrap_or_else(|| baton_config::HostLimits::default().write_budget_rows_per_minute);
        let rows = r.batch.samples.len() as u64;
        let before = self.budgets.stats;
        self.budgets.admit_batch(
            &mut r.batch,
            |svc| {
                config
                    .as_ref()?
                    .services
                    .get(svc)?
                    .write_budget_rows_per_minute
            },
            per_minute,
            clock(),
        );
        let st = self.budgets.stats;
        if st != before {
            let kept = r.batch.samples.len() as u64;
            if st.batches_downsampled > before.batches_downsampled
                || st.batches_refused > before.batches_refused
            {
                tracing::warn!(rows, kept, "write budget: batch down-sampled or refused");
                eprintln!(
                    "baton up: write budget: {kept} of {rows} rows kept ({} budget(s) over)",
                    (st.batches_downsampled - before.batches_downsampled)
                        + (st.batches_refused - before.batches_refused)
                );
            }
        }
        self.metrics
            .batches_downsampled
            .store(st.batches_downsampled, Ordering::Relaxed);
        self.metrics
            .batches_refused_budget
            .store(st.batches_refused, Ordering::Relaxed);
        self.metrics
            .rows_dropped_budget
            .store(st.rows_dropped, Ordering::Relaxed);
        let per_key: BTreeMap<String, BudgetStatus> = self
            .budgets
            .per_key
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    BudgetStatus {
                        batches_accepted: v.batches_accepted,
                        batches_downsampled: v.batches_downsampled,
                        batches_refused: v.batches_refused,
                        rows_dropped: v.rows_dropped,
                    },
                )
            })
            .collect();
        sync::write(&self.status).write_budgets = Some(per_key);
        let kept = r.batch.samples.len() as u64;
        if kept > 0 {
            self.sink.write(&self.metrics, r);
        }
        kept
    }
}
