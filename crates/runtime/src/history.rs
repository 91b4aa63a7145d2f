//! `baton up`'s run history: runs of this host that ended (on-demand, triggered, and the
//! config's continuous rules; not the whole-host chain's windows) are written to the store's run
//! history every 2 s and at stop, so `baton runs list` still shows them after a restart. Run ids
//! go on after the largest stored one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_model::sync;
use baton_model::time::now_ms;
use baton_scheduler::Scheduler;
use baton_server::runs::RunView;
use baton_store::{RunRecord, Store, StoreError};

use crate::driver::is_host_chain;
use crate::stop::{sleep_unless_stopped, stop_requested};
use crate::Error;

type SharedStore = Arc<Mutex<Box<dyn Store>>>;

/// Makes the scheduler's run ids go on after the store's run history.
pub fn continue_ids(scheduler: &Mutex<Scheduler>, store: &SharedStore) -> Result<(), StoreError> {
    let last = sync::lock(store)
        .run_history(1)?
        .first()
        .map_or(0, |r| r.id);
    sync::lock(scheduler).continue_ids_after(last);
    Ok(())
}

/// Starts the thread that writes ended runs to the run history; it returns after a last write
/// once a stop is asked for.
pub fn spawn(
    scheduler: Arc<Mutex<Scheduler>>,
    store: SharedStore,
    host: String,
) -> Result<std::thread::JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("baton-history".into())
        .spawn(move || {
            let mut recorded = HashSet::new();
            loop {
                let stopping = stop_requested();
                record(&scheduler, &store, &host, &mut recorded);
                if stopping {
                    return;
                }
                sleep_unless_stopped(Duration::from_secs(2));
            }
        })
        .map_err(Error::io("starting the run history thread"))
}

/// Writes the runs that ended since the last call.
fn record(
    scheduler: &Mutex<Scheduler>,
    store: &SharedStore,
    host: &str,
    recorded: &mut HashSet<u64>,
) {
    let now = now_ms();
    let records: Vec<RunRecord> = {
        let s = sync::lock(scheduler);
        s.runs()
            .filter(|r| r.state.is_terminal() && !recorded.contains(&r.id))
            .filter(|r| !is_host_chain(&r.request.mode))
            .map(|r| RunRecord {
                id: r.id,
                host: host.to_string(),
                profiler: r.request.profiler.clone(),
                state: r.state.name().into(),
                recorded_ms: now,
                json: serde_json::to_string(&RunView::of(r)).unwrap_or_default(),
            })
            .collect()
    };
    if records.is_empty() {
        return;
    }
    match sync::lock(store).record_runs(&records) {
        Ok(()) => recorded.extend(records.iter().map(|r| r.id)),
        Err(e) => tracing::warn!(error = %e, "writing the run history failed; retrying"),
    }
}
