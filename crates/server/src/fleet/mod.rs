//! Fleet mode: the hosts whose agents registered, and the runs assigned to them.
//!
//! An agent registers, then long-polls `POST /api/v1/agents/heartbeat`: each call reports the
//! states of its runs and returns as soon as there is something for it (a run to start, one to
//! cancel, a new config), or after `wait` seconds. A host whose agent has not called for
//! `host_timeout` is gone, and its unfinished runs fail with that reason; so do they when the
//! agent registers again as a new process (it was killed or crashed mid-run).
//!
//! The server places a run on its host; the host's agent queues it in its own scheduler, which
//! keeps the host's safety rules (one PMU user, concurrency groups, caps).
//!
//! The fleet's state is durable: hosts, unfinished runs with their placements, the next run id
//! and the tuner's state are kept in the store (`durable`), so a restarted server, or another
//! server that takes over the control plane, resumes them. Only the server that holds the
//! control plane (`crate::leader`) serves agents and runs; the others answer with its URL.
//!
//! This module holds the fleet's state; `protocol` the agents' messages, `handlers` the routes,
//! `durable` what goes to the store and back.

pub mod durable;
pub(crate) mod handlers;
pub mod protocol;
pub mod tuning;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use baton_model::sync::{lock, read};
use baton_model::time::rfc3339_ms;
use serde::{Deserialize, Serialize};

pub use protocol::{
    Assignment, ConfigFiles, Heartbeat, HeartbeatReply, Probabilities, RegisterReply, Registration,
    RuleProbability, RuleYield, RunReport,
};

use crate::api::Health;
use crate::leader::Leadership;
use crate::state::{LatencyStat, LiveConfig};

/// One host of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRecord {
    #[serde(flatten)]
    pub registration: Registration,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// `up` or `gone`.
    pub state: String,
    pub heartbeats: u64,
    /// What the last heartbeat said of the agent's health.
    pub health: Option<Health>,
    /// The length of the host's whole-host windows, as its last heartbeat said.
    #[serde(default)]
    pub window_ms: Option<u64>,
}

/// A run of the fleet, as the server tracks it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetRun {
    pub host: String,
    /// What the agent is sent: the id, profiler, target, duration and the rest.
    #[serde(flatten)]
    pub job: Assignment,
    /// `queued` (not yet sent), `assigned` (sent), then what the agent reports: `queued`,
    /// `running`, `suspended`, `processing`, `done`, `failed`, `cancelled`.
    pub state: String,
    pub reason: Option<String>,
    pub samples: u64,
    pub queued_at_ms: u64,
    /// When it started on the agent, by the agent's report (kept between its queueing and the
    /// report's arrival, whatever the agent's clock says); else when a heartbeat first said it
    /// was past `queued`.
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// The agent process the run was sent to.
    #[serde(skip)]
    pub instance: Option<String>,
    #[serde(skip)]
    pub cancel_sent: bool,
    pub cancel_requested: bool,
    /// Its final state is in the store's run history.
    #[serde(skip)]
    pub recorded: bool,
}

impl FleetRun {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed" | "cancelled")
    }

    pub(crate) fn fail(&mut self, now: u64, reason: String) {
        self.state = "failed".into();
        self.reason = Some(reason);
        self.ended_at_ms = Some(now);
    }

    /// The run as the API shows it (and as the run history keeps it).
    pub fn view(&self) -> FleetRunView {
        let at = |t: u64| rfc3339_ms(t as i64);
        FleetRunView {
            queued_at: at(self.queued_at_ms),
            started_at: self.started_at_ms.map(at),
            ended_at: self.ended_at_ms.map(at),
            duration_s: self.job.duration_ms as f64 / 1000.0,
            mode: "on-demand",
            run: self.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct FleetState {
    pub hosts: BTreeMap<String, HostRecord>,
    pub runs: BTreeMap<u64, FleetRun>,
    next_run: u64,
    /// Hosts and runs changed since they were last written to the store.
    dirty_hosts: BTreeSet<String>,
    dirty_runs: BTreeSet<u64>,
}

impl FleetState {
    /// Marks a run to be written to the store.
    pub(crate) fn touch_run(&mut self, id: u64) {
        self.dirty_runs.insert(id);
    }

    /// Marks a host to be written to the store.
    pub(crate) fn touch_host(&mut self, host: &str) {
        self.dirty_hosts.insert(host.to_string());
    }

    /// Forgets every host and run, and what was to be written of them.
    fn forget(&mut self) {
        self.hosts.clear();
        self.runs.clear();
        self.dirty_hosts.clear();
        self.dirty_runs.clear();
    }
}

/// The fleet: shared state plus the wake-up for long polls.
pub struct Fleet {
    pub state: Mutex<FleetState>,
    changed: tokio::sync::Notify,
    pub host_timeout_ms: u64,
    pub heartbeat_s: u64,
    pub config: Option<Arc<RwLock<LiveConfig>>>,
    pub clock: fn() -> u64,
    /// Checks a request's profiler and options against the registry.
    pub check_run: fn(&str, &BTreeMap<String, String>) -> Result<(), String>,
    pub heartbeat_latency: LatencyStat,
    /// Whether this server holds the control plane, and who does.
    pub leadership: Arc<Leadership>,
    /// The leadership epoch whose state was read from the store (0: none yet).
    loaded_epoch: AtomicU64,
    /// The fleet-wide tuner: run probabilities for every continuous rule and the whole-host
    /// chain.
    pub tuning: Mutex<tuning::Tuning>,
}

impl Fleet {
    pub fn new(
        host_timeout: Duration,
        heartbeat: Duration,
        config: Option<Arc<RwLock<LiveConfig>>>,
        clock: fn() -> u64,
        check_run: fn(&str, &BTreeMap<String, String>) -> Result<(), String>,
    ) -> Fleet {
        Fleet {
            state: Mutex::new(FleetState {
                next_run: 1,
                ..Default::default()
            }),
            changed: tokio::sync::Notify::new(),
            host_timeout_ms: host_timeout.as_millis() as u64,
            heartbeat_s: heartbeat.as_secs().max(1),
            config,
            clock,
            check_run,
            heartbeat_latency: Default::default(),
            leadership: Leadership::solo(),
            loaded_epoch: AtomicU64::new(0),
            tuning: Mutex::new(tuning::Tuning::new(clock())),
        }
    }

    /// Takes part in an election for the control plane instead of holding it alone.
    pub fn with_leadership(mut self, leadership: Arc<Leadership>) -> Fleet {
        self.leadership = leadership;
        self
    }

    /// Whether the state of the current leadership epoch was read from the store.
    pub fn is_loaded(&self) -> bool {
        self.loaded_epoch.load(Ordering::Acquire) == self.leadership.epoch()
    }

    /// The leadership epoch whose state was read.
    pub fn loaded_epoch(&self) -> u64 {
        self.loaded_epoch.load(Ordering::Acquire)
    }

    /// Notes that the state of `epoch` was read from the store.
    pub fn set_loaded(&self, epoch: u64) {
        self.loaded_epoch.store(epoch, Ordering::Release);
    }

    /// Run ids continue after the largest in the store's history (a restarted server never
    /// reuses one).
    pub fn continue_after(&self, last_id: u64) {
        let mut s = self.lock();
        s.next_run = s.next_run.max(last_id + 1);
    }

    /// Runs that ended and are not in the run history yet, as records; call
    /// [`Fleet::mark_recorded`] once they are stored.
    pub fn unrecorded(&self, now_ms: i64) -> Vec<baton_store::RunRecord> {
        let s = self.lock();
        s.runs
            .values()
            .filter(|r| r.is_terminal() && !r.recorded)
            .map(|r| baton_store::RunRecord {
                id: r.job.id,
                host: r.host.clone(),
                profiler: r.job.profiler.clone(),
                state: r.state.clone(),
                recorded_ms: now_ms,
                json: serde_json::to_string(&r.view()).unwrap_or_default(),
            })
            .collect()
    }

    /// Notes runs as in the run history; their control records are then deleted.
    pub fn mark_recorded(&self, ids: &[u64]) {
        let mut s = self.lock();
        for id in ids {
            if let Some(r) = s.runs.get_mut(id) {
                r.recorded = true;
                s.dirty_runs.insert(*id);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        lock(&self.state)
    }

    /// Wakes every long poll (a run was queued or cancelled, the config changed).
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Marks hosts that stopped heartbeating as gone and fails their unfinished runs.
    pub fn reap(&self) -> Vec<String> {
        let now = (self.clock)();
        let mut st = self.lock();
        let mut gone = Vec::new();
        for h in st.hosts.values_mut() {
            if h.state == "up" && now.saturating_sub(h.last_seen_ms) > self.host_timeout_ms {
                h.state = "gone".into();
                gone.push(h.registration.host.clone());
            }
        }
        for name in &gone {
            st.touch_host(name);
            let last = st.hosts[name].last_seen_ms;
            let mut failed = Vec::new();
            for r in st.runs.values_mut() {
                if &r.host == name && !r.is_terminal() {
                    failed.push(r.job.id);
                    r.fail(
                        now,
                        format!(
                            "host {name} is gone: its agent stopped heartbeating {:.0}s ago",
                            now.saturating_sub(last) as f64 / 1000.0
                        ),
                    );
                }
            }
            st.dirty_runs.extend(failed);
        }
        gone
    }

    fn config_files(&self) -> Option<ConfigFiles> {
        let live = self.config.as_ref()?;
        let l = read(live);
        let c = l.config.as_ref()?;
        Some(ConfigFiles {
            version: c.version.clone(),
            files: l.files.clone(),
        })
    }

    /// What is waiting for `host`: runs to start (now marked assigned) and runs to cancel.
    fn pending(&self, host: &str, instance: &str) -> (Vec<Assignment>, Vec<u64>) {
        let mut st = self.lock();
        let mut assign = Vec::new();
        let mut cancel = Vec::new();
        for r in st.runs.values_mut().filter(|r| r.host == host) {
            if r.state == "queued" && r.instance.is_none() {
                r.state = "assigned".into();
                r.instance = Some(instance.to_string());
                assign.push(r.job.clone());
            } else if r.cancel_requested && !r.cancel_sent && r.instance.is_some() {
                r.cancel_sent = true;
                cancel.push(r.job.id);
            }
        }
        let ids: Vec<u64> = assign
            .iter()
            .map(|a| a.id)
            .chain(cancel.iter().copied())
            .collect();
        st.dirty_runs.extend(ids);
        (assign, cancel)
    }

    /// Hosts up and gone, and runs failed, for `/metrics`.
    pub fn counts(&self) -> FleetCounts {
        let s = self.lock();
        let up = s.hosts.values().filter(|h| h.state == "up").count() as u64;
        FleetCounts {
            up,
            gone: s.hosts.len() as u64 - up,
            failed: s.runs.values().filter(|r| r.state == "failed").count() as u64,
        }
    }
}

/// What `/metrics` says of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetCounts {
    pub up: u64,
    pub gone: u64,
    pub failed: u64,
}

/// A run of the fleet as the API shows it: the run, its times as RFC 3339, and its mode.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRunView {
    #[serde(flatten)]
    pub run: FleetRun,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_s: f64,
    pub mode: &'static str,
}
