//! The fleet server's background work: retention (samples older than the limit are removed, at
//! start and hourly), and the reaper (hosts gone silent fail their runs; runs that ended go to
//! the store's run history).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_model::sync;
use baton_model::time::now_ms;
use baton_server::fleet::Fleet;
use baton_store::Store;

use crate::stop::stop_requested;
use crate::Error;

/// Starts the retention thread: removes what is older than `keep`, at start and then hourly.
pub fn spawn_retention(store: Arc<Mutex<Box<dyn Store>>>, keep: Duration) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("baton-retention".into())
        .spawn(move || loop {
            let before = now_ms() - keep.as_millis() as i64;
            let r = sync::lock(&store).drop_before(before);
            match r {
                Ok(0) => {}
                Ok(n) => eprintln!("baton server: retention removed {n} (rows or day partitions) older than {keep:?}"),
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
            std::thread::sleep(Duration::from_secs(3600));
        })
        .map_err(Error::io("starting the retention thread"))?;
    Ok(())
}

/// Every 500 ms until a stop is asked for: reaps the hosts gone silent; every 2 s, writes the
/// runs that ended to the store's run history (and once more at the end).
pub async fn reap(fleet: Arc<Fleet>, store: Arc<Mutex<Box<dyn Store>>>) {
    let mut ticks = 0u64;
    while !stop_requested() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for h in fleet.reap() {
            eprintln!("baton server: host {h} is gone (no heartbeat); its runs failed");
        }
        ticks += 1;
        if ticks % 4 == 0 {
            record_history(&fleet, &store).await;
        }
    }
    record_history(&fleet, &store).await;
}

/// Writes the runs that ended since the last call to the store's run history.
async fn record_history(fleet: &Arc<Fleet>, store: &Arc<Mutex<Box<dyn Store>>>) {
    let recs = fleet.unrecorded(now_ms());
    if recs.is_empty() {
        return;
    }
    let ids: Vec<u64> = recs.iter().map(|r| r.id).collect();
    let store = store.clone();
    let r = tokio::task::spawn_blocking(move || sync::lock(&store).record_runs(&recs)).await;
    match r {
        Ok(Ok(())) => fleet.mark_recorded(&ids),
        Ok(Err(e)) => tracing::warn!(error = %e, "recording the run history failed; retrying"),
        Err(e) => tracing::warn!(error = %e, "recording the run history failed"),
    }
}
