//! The runs API: submit an on-demand run, list, show and cancel, over the shared scheduler.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use baton_model::parse_duration;
use baton_model::time::rfc3339_ms;
use baton_scheduler::{JobRequest, Mode, Run, Scheduler};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Principal;
use crate::{ApiError, AppState};

/// What the runs API needs: the scheduler, this host's name, the clock and the audit log.
#[derive(Clone)]
pub struct RunsHandle {
    pub scheduler: Arc<Mutex<Scheduler>>,
    pub host: String,
    pub clock: fn() -> u64,
    /// Checks a request's profiler options (names against the registry), so a bad one is
    /// refused at submission rather than failing when the run starts.
    pub check_options: fn(&str, &std::collections::BTreeMap<String, String>) -> Result<(), String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub profiler: String,
    pub target: String,
    pub duration: String,
    pub frequency: Option<u64>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub force: bool,
    pub owner: Option<String>,
    /// The host to run on (fleet mode); optional when only one host is up.
    #[serde(default)]
    pub host: Option<String>,
    /// Profiler-specific options, e.g. `{"sample_bytes": "0"}`.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// The JSON view of a run.
pub fn run_json(r: &Run) -> serde_json::Value {
    let t = |v: Option<u64>| v.map(|ms| rfc3339_ms(ms as i64));
    let (mode, service) = match &r.request.mode {
        Mode::Continuous { service, .. } => ("continuous", Some(service)),
        Mode::OnDemand => ("on-demand", None),
        Mode::Triggered { service, .. } => ("triggered", Some(service)),
    };
    json!({
        "id": r.id,
        "profiler": r.request.profiler,
        "target": r.request.target,
        "mode": mode,
        "service": service,
        "state": r.state,
        "reason": r.reason,
        "priority": r.request.priority,
        "force": r.request.force,
        "owner": r.request.owner,
        "frequency_hz": r.frequency,
        "duration_s": r.request.duration_ms as f64 / 1000.0,
        "queued_at": rfc3339_ms(r.queued_at as i64),
        "started_at": t(r.started_at),
        "ended_at": t(r.ended_at),
        "queued_at_ms": r.queued_at,
        "started_at_ms": r.started_at,
        "ended_at_ms": r.ended_at,
        "preemptions": r.preemptions,
        "samples": r.samples,
        "weight": r.request.weight,
        "options": r.request.options,
    })
}

fn handle(st: &AppState) -> Result<&RunsHandle, ApiError> {
    st.runs.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this server runs no profilers".into(),
        )
    })
}

pub(crate) async fn submit(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(req): Json<RunRequest>,
) -> Result<Response, ApiError> {
    crate::fleet::check_force(&who, req.force)?;
    crate::fleet::check_adhoc(&st, &who, &req.profiler)?;
    if st.fleet.is_some() {
        return crate::fleet::submit(&st, &who, req).await;
    }
    let h = handle(&st)?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    check_target(&req.target).map_err(bad)?;
    (h.check_options)(&req.profiler, &req.options).map_err(bad)?;
    let duration = parse_duration(&req.duration).map_err(|e| bad(format!("duration: {e}")))?;
    let now = (h.clock)();
    let owner = req.owner.clone().unwrap_or_else(|| who.name.clone());
    let job = JobRequest {
        profiler: req.profiler.clone(),
        host: h.host.clone(),
        target: req.target.clone(),
        mode: Mode::OnDemand,
        duration_ms: duration.as_millis() as u64,
        frequency: req.frequency,
        priority: req.priority,
        force: req.force,
        owner: owner.clone(),
        not_before: now,
        weight: 1.0,
        options: req.options.clone(),
    };
    let id = {
        let mut s = h.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        s.submit(job, now).map_err(|e| bad(e.to_string()))?
    };
    if let Some(a) = &st.audit {
        a.record(
            if req.force { "forced_run" } else { "run" },
            json!({ "run": id, "owner": owner, "who": who.name, "role": who.role,
                    "profiler": req.profiler, "target": req.target, "duration": req.duration,
                    "frequency": req.frequency, "priority": req.priority }),
        );
    }
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

/// Target syntax, checked here so a typo is a 400 and not a failed run.
pub(crate) fn check_target(t: &str) -> Result<(), String> {
    let ok = t.split_once(':').is_some_and(|(k, v)| {
        !v.is_empty() && ["pid", "comm", "exe", "cgroup", "service"].contains(&k)
    }) && (!t.starts_with("pid:") || t[4..].parse::<u32>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad target {t:?}; use pid:PID, comm:NAME, exe:PATH, cgroup:PATH or service:NAME"
        ))
    }
}

/// Runs, newest first; continuous runs (one per window) only with `?all=1`.
pub(crate) async fn list(
    State(st): State<AppState>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    if st.fleet.is_some() {
        return crate::fleet::list(State(st), axum::extract::RawQuery(q)).await;
    }
    let h = handle(&st)?;
    let all = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "all" && (v == "1" || v == "true"));
    let s = h.scheduler.lock().unwrap_or_else(|p| p.into_inner());
    let mut runs: Vec<serde_json::Value> = s
        .runs()
        .filter(|r| all || !matches!(r.request.mode, Mode::Continuous { .. }))
        .map(run_json)
        .collect();
    runs.reverse();
    runs.truncate(200);
    Ok(Json(json!({ "runs": runs })).into_response())
}

pub(crate) async fn show(
    State(st): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    if st.fleet.is_some() {
        return crate::fleet::show(State(st), Path(id)).await;
    }
    let h = handle(&st)?;
    let s = h.scheduler.lock().unwrap_or_else(|p| p.into_inner());
    let r = s
        .run(id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no run {id}")))?;
    Ok(Json(run_json(r)).into_response())
}

pub(crate) async fn cancel(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    if st.fleet.is_some() {
        return crate::fleet::cancel(State(st), Extension(who), Path(id)).await;
    }
    let h = handle(&st)?;
    let now = (h.clock)();
    let mut s = h.scheduler.lock().unwrap_or_else(|p| p.into_inner());
    s.cancel(id, now, "cancelled by request")
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    let r = s.run(id).map(run_json).unwrap_or_default();
    Ok(Json(r).into_response())
}
