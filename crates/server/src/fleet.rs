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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use baton_model::parse_duration;
use baton_model::time::rfc3339_ms;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Principal, Role};
use crate::runs::RunRequest;
use crate::{ApiError, AppState, LiveConfig};

/// What an agent says about itself when it registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub host: String,
    /// Changes every time the agent process starts.
    pub instance: String,
    pub machine_id: String,
    pub kernel: String,
    pub cpus: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Config services with processes on the host.
    #[serde(default)]
    pub services: Vec<String>,
    /// Container cgroups seen on the host.
    #[serde(default)]
    pub containers: Vec<String>,
    #[serde(default)]
    pub version: String,
}

/// A run's state as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub id: u64,
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub samples: u64,
    /// When the run started and ended on the agent (its clock, ms since the epoch). Agents
    /// before these fields leave them out; the server then uses the heartbeat's arrival.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub ended_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    pub instance: String,
    #[serde(default)]
    pub runs: Vec<RunReport>,
    /// The config version the agent runs.
    #[serde(default)]
    pub config_version: Option<String>,
    /// Seconds the server may hold the call when it has nothing to say (long poll).
    #[serde(default)]
    pub wait_s: u64,
    /// Config services with processes on the host now, when the agent looked again.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// The agent's overhead against its budget, its write budgets and frequency, as JSON.
    #[serde(default)]
    pub health: Option<serde_json::Value>,
}

/// A run for an agent to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub id: u64,
    pub profiler: String,
    pub target: String,
    pub duration_ms: u64,
    pub frequency: Option<u64>,
    pub priority: i32,
    pub force: bool,
    pub owner: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The config tree, as files, for agents to validate and run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigFiles {
    pub version: String,
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub assign: Vec<Assignment>,
    pub cancel: Vec<u64>,
    pub config: Option<ConfigFiles>,
    pub heartbeat_s: u64,
}

/// One host of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct HostRecord {
    #[serde(flatten)]
    pub registration: Registration,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// `up` or `gone`.
    pub state: &'static str,
    pub heartbeats: u64,
    /// What the last heartbeat said of the agent's health.
    pub health: Option<serde_json::Value>,
}

/// A run of the fleet, as the server tracks it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRun {
    pub id: u64,
    pub host: String,
    pub profiler: String,
    pub target: String,
    pub duration_ms: u64,
    pub frequency: Option<u64>,
    pub priority: i32,
    pub force: bool,
    pub owner: String,
    pub options: BTreeMap<String, String>,
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

    fn fail(&mut self, now: u64, reason: String) {
        self.state = "failed".into();
        self.reason = Some(reason);
        self.ended_at_ms = Some(now);
    }

    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["queued_at"] = json!(rfc3339_ms(self.queued_at_ms as i64));
        v["ended_at"] = json!(self.ended_at_ms.map(|t| rfc3339_ms(t as i64)));
        v["started_at"] = json!(self.started_at_ms.map(|t| rfc3339_ms(t as i64)));
        v["duration_s"] = json!(self.duration_ms as f64 / 1000.0);
        v["mode"] = json!("on-demand");
        v
    }
}

#[derive(Debug, Default)]
pub struct FleetState {
    pub hosts: BTreeMap<String, HostRecord>,
    pub runs: BTreeMap<u64, FleetRun>,
    next_run: u64,
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
    pub heartbeat_latency: crate::LatencyStat,
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
        }
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
                id: r.id,
                host: r.host.clone(),
                profiler: r.profiler.clone(),
                state: r.state.clone(),
                recorded_ms: now_ms,
                json: r.json().to_string(),
            })
            .collect()
    }

    pub fn mark_recorded(&self, ids: &[u64]) {
        let mut s = self.lock();
        for id in ids {
            if let Some(r) = s.runs.get_mut(id) {
                r.recorded = true;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
                h.state = "gone";
                gone.push(h.registration.host.clone());
            }
        }
        for name in &gone {
            let last = st.hosts[name].last_seen_ms;
            for r in st.runs.values_mut() {
                if &r.host == name && !r.is_terminal() {
                    r.fail(
                        now,
                        format!(
                            "host {name} is gone: its agent stopped heartbeating {:.0}s ago",
                            now.saturating_sub(last) as f64 / 1000.0
                        ),
                    );
                }
            }
        }
        gone
    }

    fn config_files(&self) -> Option<ConfigFiles> {
        let live = self.config.as_ref()?;
        let l = live.read().unwrap_or_else(|p| p.into_inner());
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
                assign.push(Assignment {
                    id: r.id,
                    profiler: r.profiler.clone(),
                    target: r.target.clone(),
                    duration_ms: r.duration_ms,
                    frequency: r.frequency,
                    priority: r.priority,
                    force: r.force,
                    owner: r.owner.clone(),
                    options: r.options.clone(),
                });
            } else if r.cancel_requested && !r.cancel_sent && r.instance.is_some() {
                r.cancel_sent = true;
                cancel.push(r.id);
            }
        }
        (assign, cancel)
    }
}

/// `POST /api/v1/agents/register`
pub(crate) async fn register(
    State(st): State<AppState>,
    Json(reg): Json<Registration>,
) -> Result<Response, ApiError> {
    let f = fleet(&st)?;
    if reg.host.is_empty() || reg.instance.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "host and instance are required".into(),
        ));
    }
    let now = (f.clock)();
    let mut failed = Vec::new();
    {
        let mut s = f.lock();
        let previous = s
            .hosts
            .get(&reg.host)
            .map(|h| h.registration.instance.clone());
        if let Some(prev) = previous.filter(|p| *p != reg.instance) {
            for r in s.runs.values_mut() {
                if r.host == reg.host && !r.is_terminal() && r.instance.as_deref() == Some(&prev) {
                    r.fail(
                        now,
                        format!(
                            "the agent on {} restarted during the run (its previous process died)",
                            reg.host
                        ),
                    );
                    failed.push(r.id);
                }
            }
        }
        let heartbeats = s.hosts.get(&reg.host).map(|h| h.heartbeats).unwrap_or(0);
        s.hosts.insert(
            reg.host.clone(),
            HostRecord {
                registration: reg.clone(),
                registered_ms: now,
                last_seen_ms: now,
                state: "up",
                heartbeats,
                health: None,
            },
        );
    }
    tracing::info!(host = %reg.host, instance = %reg.instance, failed = failed.len(), "agent registered");
    Ok(Json(json!({
        "heartbeat_s": f.heartbeat_s,
        "failed_runs": failed,
        "config": f.config_files(),
    }))
    .into_response())
}

/// `POST /api/v1/agents/heartbeat`
pub(crate) async fn heartbeat(
    State(st): State<AppState>,
    Json(hb): Json<Heartbeat>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let f = fleet(&st)?.clone();
    let now = (f.clock)();
    {
        let mut s = f.lock();
        let Some(h) = s.hosts.get_mut(&hb.host) else {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("host {} is not registered; register first", hb.host),
            ));
        };
        if h.registration.instance != hb.instance {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("host {} registered again as another agent process", hb.host),
            ));
        }
        h.last_seen_ms = now;
        h.state = "up";
        h.heartbeats += 1;
        if hb.health.is_some() {
            h.health = hb.health.clone();
        }
        if let Some(svcs) = &hb.services {
            h.registration.services = svcs.clone();
        }
        for rep in &hb.runs {
            if let Some(r) = s.runs.get_mut(&rep.id) {
                if r.host != hb.host || r.is_terminal() {
                    continue;
                }
                if rep.state != "queued" && r.started_at_ms.is_none() {
                    let queued = r.queued_at_ms.min(now);
                    r.started_at_ms = Some(rep.started_at_ms.map_or(now, |t| t.clamp(queued, now)));
                }
                r.state = rep.state.clone();
                r.reason = rep.reason.clone().or(r.reason.take());
                r.samples = rep.samples;
                if r.is_terminal() {
                    let from = r.started_at_ms.unwrap_or(r.queued_at_ms).min(now);
                    r.ended_at_ms = Some(rep.ended_at_ms.map_or(now, |t| t.clamp(from, now)));
                }
            }
        }
    }
    // Server-side handling time of the heartbeat, before any long-poll wait.
    f.heartbeat_latency.observe(started.elapsed());
    let wants_config = |f: &Fleet| {
        let files = f.config_files();
        files.filter(|c| hb.config_version.as_deref() != Some(c.version.as_str()))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(hb.wait_s.min(60));
    let reply = loop {
        let notified = f.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (assign, cancel) = f.pending(&hb.host, &hb.instance);
        let config = wants_config(&f);
        if !assign.is_empty() || !cancel.is_empty() || config.is_some() {
            break HeartbeatReply {
                assign,
                cancel,
                config,
                heartbeat_s: f.heartbeat_s,
            };
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break HeartbeatReply {
                heartbeat_s: f.heartbeat_s,
                ..Default::default()
            };
        }
    };
    {
        let mut s = f.lock();
        if let Some(h) = s.hosts.get_mut(&hb.host) {
            h.last_seen_ms = (f.clock)();
        }
    }
    Ok(Json(reply).into_response())
}

fn fleet(st: &AppState) -> Result<&Arc<Fleet>, ApiError> {
    st.fleet
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "this is not a fleet server".into()))
}

/// `GET /api/v1/hosts`
pub(crate) async fn hosts(State(st): State<AppState>) -> Result<Response, ApiError> {
    let f = fleet(&st)?;
    let s = f.lock();
    let hosts: Vec<_> = s.hosts.values().collect();
    Ok(Json(json!({ "hosts": hosts })).into_response())
}

/// `POST /api/v1/runs` in fleet mode: the run goes to the host it names.
pub(crate) async fn submit(
    st: &AppState,
    who: &Principal,
    req: RunRequest,
) -> Result<Response, ApiError> {
    let f = fleet(st)?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    crate::runs::check_target(&req.target).map_err(bad)?;
    (f.check_run)(&req.profiler, &req.options).map_err(bad)?;
    let duration = parse_duration(&req.duration).map_err(|e| bad(format!("duration: {e}")))?;
    let now = (f.clock)();
    let id = {
        let mut s = f.lock();
        let up: Vec<String> = s
            .hosts
            .values()
            .filter(|h| h.state == "up")
            .map(|h| h.registration.host.clone())
            .collect();
        let host = match &req.host {
            Some(h) => match s.hosts.get(h) {
                None => {
                    return Err(bad(format!(
                        "unknown host {h:?}; hosts up: {}",
                        up.join(", ")
                    )))
                }
                Some(r) if r.state != "up" => {
                    return Err(bad(format!(
                        "host {h} is gone (its agent stopped heartbeating)"
                    )))
                }
                Some(_) => h.clone(),
            },
            None if up.len() == 1 => up[0].clone(),
            None => {
                return Err(bad(format!(
                    "name the host to run on (\"host\"); hosts up: {}",
                    if up.is_empty() {
                        "none".into()
                    } else {
                        up.join(", ")
                    }
                )))
            }
        };
        let id = s.next_run;
        s.next_run += 1;
        s.runs.insert(
            id,
            FleetRun {
                id,
                host,
                profiler: req.profiler.clone(),
                target: req.target.clone(),
                duration_ms: duration.as_millis() as u64,
                frequency: req.frequency,
                priority: req.priority,
                force: req.force,
                owner: who.name.clone(),
                options: req.options.clone(),
                state: "queued".into(),
                reason: None,
                samples: 0,
                queued_at_ms: now,
                started_at_ms: None,
                ended_at_ms: None,
                instance: None,
                cancel_sent: false,
                cancel_requested: false,
                recorded: false,
            },
        );
        id
    };
    f.wake();
    if let Some(a) = &st.audit {
        let host = f.lock().runs.get(&id).map(|r| r.host.clone());
        a.record(
            if req.force { "forced_run" } else { "run" },
            json!({ "run": id, "who": who.name, "role": who.role, "host": host,
                    "profiler": req.profiler, "target": req.target, "duration": req.duration,
                    "frequency": req.frequency, "priority": req.priority }),
        );
    }
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

pub(crate) async fn list(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let f = fleet(&st)?;
    let host = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.to_string());
    let (mut runs, known): (Vec<_>, std::collections::HashSet<u64>) = {
        let s = f.lock();
        (
            s.runs
                .values()
                .rev()
                .filter(|r| host.as_ref().is_none_or(|h| &r.host == h))
                .map(FleetRun::json)
                .collect(),
            s.runs.keys().copied().collect(),
        )
    };
    // Runs of earlier server processes, from the store's run history.
    if runs.len() < 200 {
        let history = crate::with_store(&st, |s| s.run_history(400)).await?;
        runs.extend(
            history
                .into_iter()
                .filter(|r| !known.contains(&r.id))
                .filter(|r| host.as_ref().is_none_or(|h| &r.host == h))
                .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.json).ok()),
        );
    }
    runs.truncate(200);
    Ok(Json(json!({ "runs": runs })).into_response())
}

pub(crate) async fn show(
    State(st): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let f = fleet(&st)?;
    let live = f.lock().runs.get(&id).map(FleetRun::json);
    if let Some(v) = live {
        return Ok(Json(v).into_response());
    }
    // A run of an earlier server process.
    let history = crate::with_store(&st, |s| s.run_history(10_000)).await?;
    history
        .into_iter()
        .find(|r| r.id == id)
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.json).ok())
        .map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no run {id}")))
}

pub(crate) async fn cancel(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let f = fleet(&st)?;
    let now = (f.clock)();
    let out = {
        let mut s = f.lock();
        let r = s
            .runs
            .get_mut(&id)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no run {id}")))?;
        if !r.is_terminal() {
            if r.instance.is_none() {
                r.state = "cancelled".into();
                r.reason = Some(format!("cancelled by {} before it was sent", who.name));
                r.ended_at_ms = Some(now);
            } else {
                r.cancel_requested = true;
            }
        }
        r.json()
    };
    f.wake();
    if let Some(a) = &st.audit {
        a.record("cancel_run", json!({ "run": id, "who": who.name }));
    }
    Ok(Json(out).into_response())
}

/// Counts of hosts and runs by state, for `/metrics`.
pub fn counts(f: &Fleet) -> (u64, u64, HashMap<String, u64>) {
    let s = f.lock();
    let up = s.hosts.values().filter(|h| h.state == "up").count() as u64;
    let gone = s.hosts.len() as u64 - up;
    let mut by_state = HashMap::new();
    for r in s.runs.values() {
        *by_state.entry(r.state.clone()).or_insert(0) += 1;
    }
    (up, gone, by_state)
}

/// An ad-hoc profiler (a bpftrace script of the config tree) runs arbitrary kernel probes: its
/// runs need an admin, as forced runs do.
pub(crate) fn check_adhoc(
    st: &AppState,
    who: &Principal,
    profiler: &str,
) -> Result<bool, ApiError> {
    let adhoc = st.config.as_ref().is_some_and(|c| {
        c.read()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .as_ref()
            .is_some_and(|c| c.adhoc.contains_key(profiler))
    });
    if adhoc && who.role < Role::Admin {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not start the ad-hoc profiler {profiler}: bpftrace scripts need the admin role",
                who.name
            ),
        ));
    }
    Ok(adhoc)
}

/// A forced run needs an admin.
pub(crate) fn check_force(who: &Principal, force: bool) -> Result<(), ApiError> {
    if force && who.role < Role::Admin {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not force a run: that needs the admin role",
                who.name
            ),
        ));
    }
    Ok(())
}
