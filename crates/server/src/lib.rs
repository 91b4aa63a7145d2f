//! The HTTP API and the embedded web UI, over any [`Store`].
//!
//! Routes (all GET):
//! - `/` — the UI, one self-contained page (no CDN);
//! - `/api/v1/flamegraph`, `/api/v1/top`, `/api/v1/timeseries`, `/api/v1/export`,
//!   `/api/v1/labels/{label}`, `/api/v1/status`;
//! - `/metrics` — Prometheus text.
//!
//! Query parameters: `profiler` (default `cpu`), `since` (e.g. `15m`, default `1h`) or
//! `from`/`to` in Unix milliseconds, and any number of `filter=label=value` (`!=`, `~` too).

mod params;
pub mod runs;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use baton_model::export::{self, Format};
use baton_store::{Store, StoreError};
use serde_json::json;

pub use params::{parse_params, parse_params_with, ApiParams};

/// Counter lines for `/metrics`: (name, help, kind, value).
pub type MetricLines = Vec<(&'static str, &'static str, &'static str, f64)>;
/// Produces the agent's metrics at scrape time.
pub type MetricsFn = Arc<dyn Fn() -> MetricLines + Send + Sync>;

/// The config in force and the story of its reloads, shared with whoever watches the directory.
#[derive(Debug, Default, Clone)]
pub struct LiveConfig {
    pub dir: String,
    pub config: Option<baton_config::Config>,
    pub loaded_at_ms: i64,
    pub reloads: u64,
    pub rejected: u64,
    /// `file:line:col: message` lines of the last rejected tree, if the newest edit was bad.
    pub last_errors: Vec<String>,
}

/// Shared state of the server.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Mutex<Box<dyn Store>>>,
    pub metrics: Option<MetricsFn>,
    /// Facts shown by `/api/v1/status` (event, frequency, data dir…), updated as they change.
    pub status: Arc<RwLock<serde_json::Value>>,
    pub config: Option<Arc<RwLock<LiveConfig>>>,
    pub runs: Option<runs::RunsHandle>,
    requests: Arc<AtomicU64>,
    query_errors: Arc<AtomicU64>,
}

impl AppState {
    pub fn new(
        store: Arc<Mutex<Box<dyn Store>>>,
        metrics: Option<MetricsFn>,
        status: Arc<RwLock<serde_json::Value>>,
        config: Option<Arc<RwLock<LiveConfig>>>,
    ) -> Self {
        AppState {
            store,
            metrics,
            status,
            config,
            runs: None,
            requests: Arc::new(AtomicU64::new(0)),
            query_errors: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/flamegraph", get(flamegraph))
        .route("/api/v1/top", get(top))
        .route("/api/v1/timeseries", get(timeseries))
        .route("/api/v1/histograms", get(histograms))
        .route("/api/v1/export", get(export_profile))
        .route("/api/v1/labels/{label}", get(labels))
        .route("/api/v1/status", get(status))
        .route("/api/v1/config", get(config))
        .route("/api/v1/runs", get(runs::list).post(runs::submit))
        .route("/api/v1/runs/{id}", get(runs::show))
        .route(
            "/api/v1/runs/{id}/cancel",
            axum::routing::post(runs::cancel),
        )
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

const INDEX_HTML: &str = include_str!("../../../web/index.html");

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// An API error: status plus a one-line message, as JSON.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::UnknownLabel(_) | StoreError::BadFilter(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

/// Runs a store call off the async threads.
async fn with_store<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    state.requests.fetch_add(1, Ordering::Relaxed);
    let store = state.store.clone();
    let errors = state.query_errors.clone();
    let res = tokio::task::spawn_blocking(move || {
        let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.as_mut())
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    res.map_err(|e| {
        errors.fetch_add(1, Ordering::Relaxed);
        ApiError::from(e)
    })
}

fn parse(st: &AppState, q: Option<String>) -> Result<ApiParams, ApiError> {
    let config = st
        .config
        .as_ref()
        .and_then(|l| l.read().unwrap_or_else(|p| p.into_inner()).config.clone());
    parse_params_with(q.as_deref().unwrap_or(""), config.as_ref())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))
}

async fn flamegraph(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = parse(&st, q)?;
    let query = p.query.clone();
    let named = with_store(&st, move |s| s.named_stacks(&query)).await?;
    let tree = named.flame_tree();
    Ok(Json(json!({
        "from_ms": p.query.from_ms,
        "to_ms": p.query.to_ms,
        "unit": named.value_type.map(|v| v.unit).unwrap_or_else(|| "nanoseconds".into()),
        "total": tree.value,
        "tree": tree,
    }))
    .into_response())
}

async fn top(State(st): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let p = parse(&st, q)?;
    let query = p.query.clone();
    let named = with_store(&st, move |s| s.named_stacks(&query)).await?;
    let mut rows = named.top_functions();
    rows.truncate(p.limit);
    Ok(Json(json!({
        "unit": named.value_type.as_ref().map(|v| v.unit.clone()).unwrap_or_else(|| "nanoseconds".into()),
        "total": named.total(),
        "rows": rows,
    }))
    .into_response())
}

/// Histograms of a profiler in the range, merged per (name, key), with p50/p90/p99.
async fn histograms(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = parse(&st, q)?;
    let query = p.query.clone();
    let hs = with_store(&st, move |s| s.histograms(&query)).await?;
    let out: Vec<serde_json::Value> = hs
        .iter()
        .map(|h| {
            json!({
                "name": h.name, "unit": h.unit, "key": h.key, "count": h.total(),
                "p50": h.quantile(0.5), "p90": h.quantile(0.9), "p99": h.quantile(0.99),
                "buckets": h.buckets,
            })
        })
        .collect();
    Ok(Json(json!({
        "profiler": p.query.profiler,
        "from_ms": p.query.from_ms,
        "to_ms": p.query.to_ms,
        "histograms": out,
    }))
    .into_response())
}

async fn timeseries(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = parse(&st, q)?;
    let query = p.query.clone();
    let step = p.step_ms;
    let points = with_store(&st, move |s| s.timeseries(&query, step)).await?;
    Ok(Json(json!({
        "from_ms": p.query.from_ms,
        "to_ms": p.query.to_ms,
        "step_ms": step,
        "points": points,
    }))
    .into_response())
}

async fn export_profile(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = parse(&st, q)?;
    let format = p.format.unwrap_or(Format::Pprof);
    let query = p.query.clone();
    let profile = with_store(&st, move |s| s.profile(&query)).await?;
    let mut buf = Vec::new();
    export::write(&profile, format, &mut buf)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (ctype, ext) = match format {
        Format::Pprof => ("application/octet-stream", "pb.gz"),
        Format::Collapsed => ("text/plain; charset=utf-8", "folded"),
        Format::Speedscope => ("application/json", "speedscope.json"),
        Format::Svg => ("image/svg+xml", "svg"),
        Format::Json => ("application/json", "json"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"baton-{}.{ext}\"", p.query.profiler),
            ),
        ],
        Body::from(buf),
    )
        .into_response())
}

async fn labels(
    State(st): State<AppState>,
    Path(label): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = parse(&st, q)?;
    let query = p.query.clone();
    let limit = p.limit;
    let values = with_store(&st, move |s| s.label_values(&query, &label, limit)).await?;
    let values: Vec<_> = values
        .into_iter()
        .map(|(v, w)| json!({ "value": v, "total": w }))
        .collect();
    Ok(Json(json!({ "values": values })).into_response())
}

async fn status(State(st): State<AppState>) -> Result<Response, ApiError> {
    let rows = with_store(&st, |s| s.sample_rows()).await?;
    let mut v = st.status.read().unwrap_or_else(|p| p.into_inner()).clone();
    v["sample_rows"] = json!(rows);
    Ok(Json(v).into_response())
}

async fn config(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(live) = &st.config else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "no config directory is in use; start baton up with --config DIR".into(),
        ));
    };
    let live = live.read().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Json(json!({
        "dir": live.dir,
        "version": live.config.as_ref().map(|c| c.version.clone()),
        "loaded_at_ms": live.loaded_at_ms,
        "reloads": live.reloads,
        "rejected": live.rejected,
        "last_errors": live.last_errors,
        "config": live.config,
    }))
    .into_response())
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut lines: MetricLines = st.metrics.as_ref().map(|f| f()).unwrap_or_default();
    if let Some(live) = &st.config {
        let live = live.read().unwrap_or_else(|p| p.into_inner());
        lines.push((
            "baton_config_reloads_total",
            "Config trees accepted after a change on disk.",
            "counter",
            live.reloads as f64,
        ));
        lines.push((
            "baton_config_rejected_total",
            "Config trees rejected (the last good one stayed live).",
            "counter",
            live.rejected as f64,
        ));
    }
    lines.push((
        "baton_http_api_requests_total",
        "API requests that touched the store.",
        "counter",
        st.requests.load(Ordering::Relaxed) as f64,
    ));
    lines.push((
        "baton_http_api_errors_total",
        "API requests that failed.",
        "counter",
        st.query_errors.load(Ordering::Relaxed) as f64,
    ));
    let mut out = String::new();
    for (name, help, kind, value) in lines {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
