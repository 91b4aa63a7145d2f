//! The runs API: submit an on-demand run, list, show and cancel, over this host's scheduler;
//! on a fleet server the same routes go to `fleet::handlers`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use baton_model::parse_duration;
use baton_model::sync::lock;
use baton_model::time::rfc3339_ms;
use baton_scheduler::{JobRequest, Mode, Run, RunState, Scheduler};
use serde::Serialize;

use crate::api::{Created, RunList};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::fleet::handlers as fleet;
use crate::submit::{audit_event, audit_record, check_caller, check_target};
use crate::AppState;

pub use crate::submit::RunRequest;

/// What the runs API needs: the scheduler, this host's name, the clock and the audit log.
#[derive(Clone)]
pub struct RunsHandle {
    pub scheduler: Arc<Mutex<Scheduler>>,
    pub host: String,
    pub clock: fn() -> u64,
    /// Checks a request's profiler options (names against the registry), so a bad one is
    /// refused at submission rather than failing when the run starts.
    pub check_options: fn(&str, &BTreeMap<String, String>) -> Result<(), String>,
}

/// A run of this host, as the API shows it.
#[derive(Debug, Serialize)]
pub struct RunView<'a> {
    pub id: u64,
    pub profiler: &'a str,
    pub target: &'a str,
    /// `continuous`, `on-demand` or `triggered`.
    pub mode: &'static str,
    /// The service of a continuous or triggered run.
    pub service: Option<&'a str>,
    pub state: RunState,
    pub reason: Option<&'a str>,
    pub priority: i32,
    pub force: bool,
    pub owner: &'a str,
    pub frequency_hz: u64,
    pub duration_s: f64,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub queued_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub preemptions: u32,
    pub samples: u64,
    pub weight: f64,
    pub options: &'a BTreeMap<String, String>,
}

impl<'a> RunView<'a> {
    pub fn of(r: &'a Run) -> RunView<'a> {
        let t = |v: Option<u64>| v.map(|ms| rfc3339_ms(ms as i64));
        let (mode, service) = match &r.request.mode {
            Mode::Continuous { service, .. } => ("continuous", Some(service.as_str())),
            Mode::OnDemand => ("on-demand", None),
            Mode::Triggered { service, .. } => ("triggered", Some(service.as_str())),
        };
        RunView {
            id: r.id,
            profiler: &r.request.profiler,
            target: &r.request.target,
            mode,
            service,
            state: r.state,
            reason: r.reason.as_deref(),
            priority: r.request.priority,
            force: r.request.force,
            owner: &r.request.owner,
            frequency_hz: r.frequency,
            duration_s: r.request.duration_ms as f64 / 1000.0,
            queued_at: rfc3339_ms(r.queued_at as i64),
            started_at: t(r.started_at),
            ended_at: t(r.ended_at),
            queued_at_ms: r.queued_at,
            started_at_ms: r.started_at,
            ended_at_ms: r.ended_at,
            preemptions: r.preemptions,
            samples: r.samples,
            weight: r.request.weight,
            options: &r.request.options,
        }
    }
}

fn handle(st: &AppState) -> Result<&RunsHandle, ApiError> {
    st.runs
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server runs no profilers"))
}

/// `POST /api/v1/runs`
pub(crate) async fn submit(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(req): Json<RunRequest>,
) -> Result<Response, ApiError> {
    check_caller(&st, &who, &req)?;
    if st.fleet.is_some() {
        return Ok(fleet::submit(&st, &who, req).await.into_response());
    }
    let h = handle(&st)?;
    check_target(&req.target)?;
    (h.check_options)(&req.profiler, &req.options).map_err(ApiError::bad_request)?;
    let duration = parse_duration(&req.duration)
        .map_err(|e| ApiError::bad_request(format!("duration: {e}")))?;
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
    let id = lock(&h.scheduler)
        .submit(job, now)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(a) = &st.audit {
        let mut rec = audit_record(id, &who, &req);
        rec["owner"] = owner.into();
        a.record(audit_event(&req), rec);
    }
    Ok((StatusCode::CREATED, Json(Created { id })).into_response())
}

/// `GET /api/v1/runs`: runs, newest first; continuous runs (one per window) only with `?all=1`.
pub(crate) async fn list(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    if st.fleet.is_some() {
        return Ok(fleet::list(&st, q).await.into_response());
    }
    let h = handle(&st)?;
    let all = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "all" && (v == "1" || v == "true"));
    let (mut runs, known): (Vec<serde_json::Value>, HashSet<u64>) = {
        let s = lock(&h.scheduler);
        (
            s.runs()
                .filter(|r| all || !matches!(r.request.mode, Mode::Continuous { .. }))
                .filter_map(|r| serde_json::to_value(RunView::of(r)).ok())
                .collect(),
            s.runs().map(|r| r.id).collect(),
        )
    };
    runs.reverse();
    // Runs of earlier processes, from the store's run history.
    if runs.len() < fleet::LIST_RUNS {
        let stored = fleet::history(&st, 2 * fleet::LIST_RUNS).await?;
        runs.extend(
            stored
                .into_iter()
                .filter(|(r, v)| !known.contains(&r.id) && (all || v["mode"] != "continuous"))
                .map(|(_, v)| v),
        );
    }
    runs.truncate(fleet::LIST_RUNS);
    Ok(Json(RunList { runs }).into_response())
}

/// `GET /api/v1/runs/{id}`
pub(crate) async fn show(
    State(st): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    if st.fleet.is_some() {
        return Ok(fleet::show(&st, id).await.into_response());
    }
    let h = handle(&st)?;
    let live = {
        let s = lock(&h.scheduler);
        s.run(id)
            .and_then(|r| serde_json::to_value(RunView::of(r)).ok())
    };
    if let Some(v) = live {
        return Ok(Json(v).into_response());
    }
    // A run of an earlier process, from the store's run history.
    fleet::history(&st, 10_000)
        .await?
        .into_iter()
        .find(|(r, _)| r.id == id)
        .map(|(_, v)| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))
}

/// `POST /api/v1/runs/{id}/cancel`: the run as it is after the cancel.
pub(crate) async fn cancel(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    if st.fleet.is_some() {
        return Ok(fleet::cancel(&st, &who, id).await.into_response());
    }
    let h = handle(&st)?;
    let now = (h.clock)();
    let mut s = lock(&h.scheduler);
    s.cancel(id, now, "cancelled by request")
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(s.run(id).map(RunView::of)).into_response())
}
