//! The fleet server's retention: samples older than the limit are removed, at start and hourly.
//! (Its other background work, the control plane, is `control_plane`.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_model::sync;
use baton_model::time::now_ms;
use baton_store::Store;

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
