//! The fleet's routes: the agents' register and heartbeat calls, the hosts, and the runs
//! API on a fleet server (a run goes to the host it names).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::parse_duration;

use super::{Assignment, Fleet, FleetRun, FleetRunView, Heartbeat, HeartbeatReply, HostRecord};
use super::{RegisterReply, Registration};
use crate::api::{Created, Hosts, RunList};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::with_store;
use crate::submit::{audit_event, audit_record, check_target, RunRequest};
use crate::AppState;

/// The most runs a list shows.
pub(crate) const LIST_RUNS: usize = 200;

/// `POST /api/v1/agents/register`
pub(crate) async fn register(
    State(st): State<AppState>,
    Json(reg): Json<Registration>,
) -> Result<Json<RegisterReply>, Refusal> {
    let f = control(&st)?;
    if reg.host.is_empty() || reg.instance.is_empty() {
        return Err(ApiError::bad_request("host and instance are required").into());
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
                    failed.push(r.job.id);
                }
            }
        }
        for id in &failed {
            s.touch_run(*id);
        }
        s.touch_host(&reg.host);
        let heartbeats = s.hosts.get(&reg.host).map(|h| h.heartbeats).unwrap_or(0);
        s.hosts.insert(
            reg.host.clone(),
            HostRecord {
                registration: reg.clone(),
                registered_ms: now,
                last_seen_ms: now,
                state: "up".into(),
                heartbeats,
                health: None,
                window_ms: None,
            },
        );
    }
    tracing::info!(host = %reg.host, instance = %reg.instance, failed = failed.len(), "agent registered");
    Ok(Json(RegisterReply {
        heartbeat_s: f.heartbeat_s,
        failed_runs: failed,
        config: f.config_files(),
        probabilities: f.probabilities(),
    }))
}

/// `POST /api/v1/agents/heartbeat`
pub(crate) async fn heartbeat(
    State(st): State<AppState>,
    Json(hb): Json<Heartbeat>,
) -> Result<Json<HeartbeatReply>, Refusal> {
    let started = std::time::Instant::now();
    let f = control(&st)?.clone();
    let now = (f.clock)();
    {
        let mut s = f.lock();
        let Some(h) = s.hosts.get_mut(&hb.host) else {
            return Err(ApiError::not_found(format!(
                "host {} is not registered; register first",
                hb.host
            ))
            .into());
        };
        if h.registration.instance != hb.instance {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("host {} registered again as another agent process", hb.host),
            )
            .into());
        }
        h.last_seen_ms = now;
        let mut changed = h.state != "up";
        h.state = "up".into();
        h.heartbeats += 1;
        if hb.health.is_some() {
            h.health = hb.health.clone();
        }
        if let Some(svcs) = &hb.services {
            changed |= h.registration.services != *svcs;
            h.registration.services = svcs.clone();
        }
        if hb.window_ms.is_some() && hb.window_ms != h.window_ms {
            h.window_ms = hb.window_ms;
            changed = true;
        }
        if changed {
            s.touch_host(&hb.host);
        }
        for rep in &hb.runs {
            if let Some(r) = s.runs.get_mut(&rep.id) {
                if r.host != hb.host || r.is_terminal() {
                    continue;
                }
                let before = (r.state.clone(), r.samples);
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
                if before != (r.state.clone(), r.samples) {
                    s.touch_run(rep.id);
                }
            }
        }
    }
    f.learn(&hb.host, &hb.yields);
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
                probabilities: f.probabilities(),
            };
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break HeartbeatReply {
                heartbeat_s: f.heartbeat_s,
                probabilities: f.probabilities(),
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
    Ok(Json(reply))
}

fn fleet(st: &AppState) -> Result<&Arc<Fleet>, ApiError> {
    st.fleet
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this is not a fleet server"))
}

/// Why a control-plane call is not served here.
#[derive(Debug)]
pub(crate) enum Refusal {
    Api(ApiError),
    /// Another server holds the control plane (its URL, when known): a 503 with the header
    /// `X-Baton-Leader`, which clients follow.
    NotLeader(Option<String>),
    /// This server took the control plane over and is still reading it from the store.
    Loading,
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Api(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Api(e) => e.into_response(),
            Refusal::NotLeader(url) => {
                let msg = match &url {
                    Some(u) => format!("this server does not hold the fleet's control plane; {u} does"),
                    None => "this server does not hold the fleet's control plane, and no server holds it now; retry".to_string(),
                };
                let mut r = ApiError(StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
                if let Some(v) = url.and_then(|u| u.parse().ok()) {
                    r.headers_mut().insert(crate::leader::LEADER_HEADER, v);
                }
                r
            }
            Refusal::Loading => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server is taking over the fleet's control plane; retry in a moment".into(),
            )
            .into_response(),
        }
    }
}

/// The fleet, where this server holds its control plane and has read it from the store.
fn control(st: &AppState) -> Result<&Arc<Fleet>, Refusal> {
    let f = fleet(st)?;
    if !f.leadership.is_leader() {
        return Err(Refusal::NotLeader(f.leadership.leader_url()));
    }
    if !f.is_loaded() {
        return Err(Refusal::Loading);
    }
    Ok(f)
}

/// `GET /api/v1/hosts`
pub(crate) async fn hosts(State(st): State<AppState>) -> Result<Json<Hosts<HostRecord>>, Refusal> {
    let f = control(&st)?;
    let hosts = f.lock().hosts.values().cloned().collect();
    Ok(Json(Hosts { hosts }))
}

/// `GET /api/v1/tuner`: the fleet tuner's probability, hosts and yield per rule.
pub(crate) async fn tuner(
    State(st): State<AppState>,
) -> Result<Json<super::tuning::TunerView>, Refusal> {
    Ok(Json(control(&st)?.tuner_view()))
}

/// The host a run goes to: the one it names, which must be up, or the only one up.
fn choose_host(
    hosts: &std::collections::BTreeMap<String, HostRecord>,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    let up: Vec<&str> = hosts
        .values()
        .filter(|h| h.state == "up")
        .map(|h| h.registration.host.as_str())
        .collect();
    match asked {
        Some(h) => match hosts.get(h) {
            None => Err(ApiError::bad_request(format!(
                "unknown host {h:?}; hosts up: {}",
                up.join(", ")
            ))),
            Some(r) if r.state != "up" => Err(ApiError::bad_request(format!(
                "host {h} is gone (its agent stopped heartbeating)"
            ))),
            Some(_) => Ok(h.to_string()),
        },
        None if up.len() == 1 => Ok(up[0].to_string()),
        None => Err(ApiError::bad_request(format!(
            "name the host to run on (\"host\"); hosts up: {}",
            if up.is_empty() {
                "none".into()
            } else {
                up.join(", ")
            }
        ))),
    }
}

/// `POST /api/v1/runs` in fleet mode: the run goes to the host it names.
pub(crate) async fn submit(
    st: &AppState,
    who: &Principal,
    req: RunRequest,
) -> Result<Response, Refusal> {
    let f = control(st)?;
    check_target(&req.target)?;
    (f.check_run)(&req.profiler, &req.options).map_err(ApiError::bad_request)?;
    let duration = parse_duration(&req.duration)
        .map_err(|e| ApiError::bad_request(format!("duration: {e}")))?;
    let now = (f.clock)();
    let (id, host) = {
        let mut s = f.lock();
        let host = choose_host(&s.hosts, req.host.as_deref())?;
        let id = s.next_run;
        s.next_run += 1;
        s.runs.insert(
            id,
            FleetRun {
                host: host.clone(),
                job: Assignment {
                    id,
                    profiler: req.profiler.clone(),
                    target: req.target.clone(),
                    duration_ms: duration.as_millis() as u64,
                    frequency: req.frequency,
                    priority: req.priority,
                    force: req.force,
                    owner: who.name.clone(),
                    options: req.options.clone(),
                },
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
        (id, host)
    };
    // The run is in the store before it is acknowledged: a server killed now still has it.
    let records = f.run_records(id, baton_model::time::now_ms());
    with_store(st, move |s| s.put_control(&records)).await?;
    f.wake();
    if let Some(a) = &st.audit {
        let mut rec = audit_record(id, who, &req);
        rec["host"] = host.into();
        a.record(audit_event(&req), rec);
    }
    Ok((StatusCode::CREATED, Json(Created { id })).into_response())
}

/// A run in a list: one of this server process, or one of an earlier one, as the run
/// history stored it.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum ListedRun {
    Live(Box<FleetRunView>),
    Stored(serde_json::Value),
}

/// Runs of earlier server processes, from the store's run history, as stored.
pub(crate) async fn history(
    st: &AppState,
    limit: usize,
) -> Result<Vec<(baton_store::RunRecord, serde_json::Value)>, ApiError> {
    let records = with_store(st, move |s| s.run_history(limit)).await?;
    Ok(records
        .into_iter()
        .filter_map(|r| {
            let v = serde_json::from_str(&r.json).ok()?;
            Some((r, v))
        })
        .collect())
}

/// `GET /api/v1/runs` in fleet mode, newest first; `?host=H` keeps one host's.
pub(crate) async fn list(st: &AppState, q: Option<String>) -> Result<Response, Refusal> {
    let f = control(st)?;
    let host = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.to_string());
    let on_host = |h: &str| host.as_deref().is_none_or(|want| h == want);
    let (mut runs, known): (Vec<ListedRun>, HashSet<u64>) = {
        let s = f.lock();
        (
            s.runs
                .values()
                .rev()
                .filter(|r| on_host(&r.host))
                .map(|r| ListedRun::Live(Box::new(r.view())))
                .collect(),
            s.runs.keys().copied().collect(),
        )
    };
    if runs.len() < LIST_RUNS {
        let stored = history(st, 2 * LIST_RUNS).await?;
        runs.extend(
            stored
                .into_iter()
                .filter(|(r, _)| !known.contains(&r.id) && on_host(&r.host))
                .map(|(_, v)| ListedRun::Stored(v)),
        );
    }
    runs.truncate(LIST_RUNS);
    Ok(Json(RunList { runs }).into_response())
}

/// `GET /api/v1/runs/{id}` in fleet mode.
pub(crate) async fn show(st: &AppState, id: u64) -> Result<Response, Refusal> {
    let f = control(st)?;
    let live = f.lock().runs.get(&id).map(FleetRun::view);
    if let Some(v) = live {
        return Ok(Json(v).into_response());
    }
    let stored = history(st, 10_000).await?;
    stored
        .into_iter()
        .find(|(r, _)| r.id == id)
        .map(|(_, v)| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")).into())
}

/// `POST /api/v1/runs/{id}/cancel` in fleet mode: a run not sent yet is cancelled at once;
/// one sent is cancelled by its agent, told in its next heartbeat.
pub(crate) async fn cancel(st: &AppState, who: &Principal, id: u64) -> Result<Response, Refusal> {
    let f = control(st)?;
    let now = (f.clock)();
    let out = {
        let mut s = f.lock();
        let r = s
            .runs
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
        if !r.is_terminal() {
            if r.instance.is_none() {
                r.state = "cancelled".into();
                r.reason = Some(format!("cancelled by {} before it was sent", who.name));
                r.ended_at_ms = Some(now);
            } else {
                r.cancel_requested = true;
            }
        }
        let view = r.view();
        s.touch_run(id);
        view
    };
    f.wake();
    if let Some(a) = &st.audit {
        a.record(
            "cancel_run",
            serde_json::json!({ "run": id, "who": who.name }),
        );
    }
    Ok(Json(out).into_response())
}
