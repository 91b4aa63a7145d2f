//! The fleet's control plane in the store: hosts, unfinished runs with their placements, the
//! next run id and the tuner's state, as keyed JSON documents (`Store::put_control`).
//!
//! Changes are written behind the state: a run is written before its submit is answered; host
//! and run changes of heartbeats, reaps and placements are written by the server's background
//! loop within a second. A server that starts, or takes over the control plane, reads them back
//! (`Fleet::restore`): hosts count as seen at that moment (their agents have the host timeout
//! to heartbeat again), and a run sent to an agent that never said it had it goes back to the
//! queue and is sent again (agents ignore an id they already queued). A run that ended leaves
//! the control plane once it is in the run history.

use baton_store::ControlRecord;
use serde::{Deserialize, Serialize};

use super::{Fleet, FleetRun, HostRecord};

/// Document kinds.
pub const HOST: &str = "fleet.host";
pub const RUN: &str = "fleet.run";
pub const META: &str = "fleet.meta";
/// The key of the next run id in [`META`].
const NEXT_RUN: &str = "next_run";
/// The key of the tuner's state in [`META`].
pub const TUNER: &str = "tuner";

/// A run as the control plane keeps it: what the API shows, plus where it was sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRun {
    #[serde(flatten)]
    run: FleetRun,
    instance: Option<String>,
    #[serde(default)]
    cancel_sent: bool,
}

/// What a restore found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub hosts: usize,
    pub runs: usize,
    /// Runs that had been sent but never acknowledged, queued again.
    pub requeued: usize,
}

/// The document of the next run id.
fn next_run_record(next_run: u64, now_ms: i64) -> ControlRecord {
    ControlRecord::new(META, NEXT_RUN, next_run.to_string(), now_ms)
}

/// A run's document; a tombstone once it is in the run history.
fn run_record(r: &FleetRun, now_ms: i64) -> ControlRecord {
    let key = r.job.id.to_string();
    if r.recorded {
        return ControlRecord::deleted(RUN, &key, now_ms);
    }
    let stored = StoredRun {
        run: r.clone(),
        instance: r.instance.clone(),
        cancel_sent: r.cancel_sent,
    };
    ControlRecord::new(
        RUN,
        &key,
        serde_json::to_string(&stored).unwrap_or_default(),
        now_ms,
    )
}

impl Fleet {
    /// The documents of every host and run changed since the last call (a run recorded in the
    /// run history is deleted), and the next run id.
    pub fn dirty_records(&self, now_ms: i64) -> Vec<ControlRecord> {
        let mut st = self.lock();
        let hosts = std::mem::take(&mut st.dirty_hosts);
        let runs = std::mem::take(&mut st.dirty_runs);
        if hosts.is_empty() && runs.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for h in hosts {
            if let Some(rec) = st.hosts.get(&h) {
                let json = serde_json::to_string(rec).unwrap_or_default();
                out.push(ControlRecord::new(HOST, &h, json, now_ms));
            }
        }
        for id in runs {
            if let Some(r) = st.runs.get(&id) {
                out.push(run_record(r, now_ms));
            }
        }
        out.push(next_run_record(st.next_run, now_ms));
        out
    }

    /// The documents of one run and of the next run id, as they are now (the run stays marked
    /// for the background writer too).
    pub fn run_records(&self, id: u64, now_ms: i64) -> Vec<ControlRecord> {
        let st = self.lock();
        let mut out: Vec<ControlRecord> = st
            .runs
            .get(&id)
            .map(|r| run_record(r, now_ms))
            .into_iter()
            .collect();
        out.push(next_run_record(st.next_run, now_ms));
        out
    }

    /// Puts back what was written: hosts, runs and the next run id. `now` is when the hosts
    /// count as last seen. Replaces the fleet's hosts and runs.
    pub fn restore(
        &self,
        hosts: &[ControlRecord],
        runs: &[ControlRecord],
        meta: &[ControlRecord],
        now: u64,
    ) -> Restored {
        let mut out = Restored::default();
        let mut st = self.lock();
        st.forget();
        for h in hosts.iter().filter(|r| !r.deleted) {
            match serde_json::from_str::<HostRecord>(&h.json) {
                Ok(mut rec) => {
                    rec.last_seen_ms = now;
                    st.hosts.insert(h.key.clone(), rec);
                    out.hosts += 1;
                }
                Err(e) => tracing::warn!(host = %h.key, error = %e, "a stored host is unreadable"),
            }
        }
        for r in runs.iter().filter(|r| !r.deleted) {
            match serde_json::from_str::<StoredRun>(&r.json) {
                Ok(stored) => {
                    let mut run = stored.run;
                    run.instance = stored.instance;
                    run.cancel_sent = stored.cancel_sent;
                    if run.state == "assigned" {
                        // Sent, but the agent never said it had it: send it again.
                        run.state = "queued".into();
                        run.instance = None;
                        out.requeued += 1;
                    }
                    st.next_run = st.next_run.max(run.job.id + 1);
                    st.runs.insert(run.job.id, run);
                    out.runs += 1;
                }
                Err(e) => tracing::warn!(run = %r.key, error = %e, "a stored run is unreadable"),
            }
        }
        for m in meta.iter().filter(|m| m.key == NEXT_RUN && !m.deleted) {
            if let Ok(n) = m.json.parse::<u64>() {
                st.next_run = st.next_run.max(n);
            }
        }
        out
    }

    /// Forgets every host and run (this server no longer holds the control plane).
    pub fn clear(&self) {
        self.lock().forget();
    }
}
