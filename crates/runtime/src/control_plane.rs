//! The fleet server's control-plane loop: it reads the control plane from the store when this
//! server comes to hold it, then every 500 ms reaps hosts gone silent, re-tunes the fleet's run
//! probabilities, and writes what changed (hosts, runs, the tuner) to the store; every 2 s it
//! writes the runs that ended to the run history. A server that does not hold the control plane
//! only watches for the moment it does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_model::sync;
use baton_model::time::now_ms;
use baton_server::fleet::durable::{self, Restored};
use baton_server::fleet::Fleet;
use baton_store::{ControlRecord, Store, StoreError};

use crate::stop::stop_requested;

type SharedStore = Arc<Mutex<Box<dyn Store>>>;

/// Runs `f` on the store off the async threads; an error is said in one line.
async fn on_store<T: Send + 'static>(
    store: &SharedStore,
    f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(sync::lock(&store).as_mut())).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("a store task failed: {e}")),
    }
}

/// Reads the control plane from the store into `fleet` (hosts, runs, next run id, tuner).
pub fn load(fleet: &Fleet, store: &mut dyn Store) -> Result<Restored, StoreError> {
    let hosts = store.control(durable::HOST)?;
    let runs = store.control(durable::RUN)?;
    let meta = store.control(durable::META)?;
    // Run ids also go on after the run history, which outlives the control plane's records.
    let last = store.run_history(1)?.first().map_or(0, |r| r.id);
    let restored = fleet.restore(&hosts, &runs, &meta, (fleet.clock)());
    fleet.continue_after(last);
    if let Some(t) = meta.iter().find(|m| m.key == durable::TUNER && !m.deleted) {
        fleet.restore_tuning(&t.json);
    }
    Ok(restored)
}

/// The loop; returns once a stop is asked for, after a last write.
pub async fn run(fleet: Arc<Fleet>, store: SharedStore) {
    let mut ticks = 0u64;
    while !stop_requested() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ticks += 1;
        if !fleet.leadership.is_leader() {
            if fleet.loaded_epoch() != 0 {
                fleet.clear();
                fleet.set_loaded(0);
                eprintln!("baton server: another server holds the control plane now");
            }
            continue;
        }
        let epoch = fleet.leadership.epoch();
        if fleet.loaded_epoch() != epoch {
            let f = fleet.clone();
            match on_store(&store, move |s| load(&f, s)).await {
                Ok(r) => {
                    fleet.set_loaded(epoch);
                    eprintln!(
                        "baton server: holding the control plane: {} hosts and {} runs read from the store ({} to send again)",
                        r.hosts, r.runs, r.requeued
                    );
                    fleet.wake();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the control plane failed; retrying");
                    continue;
                }
            }
        }
        for h in fleet.reap() {
            eprintln!("baton server: host {h} is gone (no heartbeat); its runs failed");
        }
        let mut records = Vec::new();
        if let Some(state) = fleet.tune() {
            records.push(ControlRecord::new(
                durable::META,
                durable::TUNER,
                state,
                now_ms(),
            ));
        }
        records.extend(fleet.dirty_records(now_ms()));
        write(&store, records).await;
        if ticks % 4 == 0 {
            record_history(&fleet, &store).await;
        }
    }
    if fleet.leadership.is_leader() && fleet.is_loaded() {
        write(&store, fleet.dirty_records(now_ms())).await;
        record_history(&fleet, &store).await;
    }
}

/// Writes control documents; a failure is logged (what changed is written again next time it
/// changes, and agents report their runs' states in every heartbeat).
async fn write(store: &SharedStore, records: Vec<ControlRecord>) {
    if records.is_empty() {
        return;
    }
    if let Err(e) = on_store(store, move |s| s.put_control(&records)).await {
        tracing::warn!(error = %e, "writing the control plane failed");
    }
}

/// Writes the runs that ended since the last call to the store's run history.
async fn record_history(fleet: &Arc<Fleet>, store: &SharedStore) {
    let recs = fleet.unrecorded(now_ms());
    if recs.is_empty() {
        return;
    }
    let ids: Vec<u64> = recs.iter().map(|r| r.id).collect();
    match on_store(store, move |s| s.record_runs(&recs)).await {
        Ok(()) => fleet.mark_recorded(&ids),
        Err(e) => tracing::warn!(error = %e, "recording the run history failed; retrying"),
    }
}
