//! Where the driver's batches go: the embedded store (`baton up`) or the agent's outbox, which
//! ships them to the server (`baton agent`). Every outcome is counted in `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use baton_agent::{AgentMetrics, WindowReport};
use baton_model::sync;
use baton_store::Store;

use crate::outbox::Outbox;

/// Where the driver's batches go.
#[derive(Clone)]
pub enum Sink {
    Store(Arc<Mutex<Box<dyn Store>>>),
    Ship(Arc<Outbox>),
}

impl Sink {
    /// Writes one window's batch; a refusal is logged and counted, never fatal.
    pub(crate) fn write(&self, metrics: &AgentMetrics, report: WindowReport) {
        let rows = report.batch.samples.len() as u64;
        let store = match self {
            Sink::Store(s) => s,
            Sink::Ship(outbox) => {
                match outbox.push(&report.batch) {
                    Ok(()) => {
                        metrics.batches_written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        metrics.batch_write_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, rows, "the outbox refused a batch");
                    }
                }
                return;
            }
        };
        let mut guard = sync::lock(store);
        match guard.write_batch(&report.batch) {
            Ok(()) => {
                metrics.batches_written.fetch_add(1, Ordering::Relaxed);
                metrics
                    .sample_rows_written
                    .fetch_add(rows, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.batch_write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, rows, "the store refused a batch");
            }
        }
    }
}
