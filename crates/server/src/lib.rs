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

pub mod auth;
pub mod fleet;
pub mod ingest;
mod params;
pub mod runs;
pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
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
    /// The files of the tree in force, `(path, text)`, as sent to agents.
    pub files: Vec<(String, String)>,
}

/// Count, sum and maximum of a latency, for `/metrics`.
#[derive(Debug, Default)]
pub struct LatencyStat {
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl LatencyStat {
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// (count, sum in seconds, max in seconds).
    pub fn get(&self) -> (u64, f64, f64) {
        (
            self.count.load(Ordering::Relaxed),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.max_us.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
    /// Fleet mode (`baton server`): hosts, their agents and the runs placed on them.
    pub fleet: Option<Arc<fleet::Fleet>>,
    /// The accepted tokens; `None` is `--insecure-local` (every caller is the local admin).
    pub tokens: Option<Arc<auth::Tokens>>,
    pub audit: Option<Arc<auth::Audit>>,
    pub ingest: Arc<ingest::IngestStats>,
    /// `baton server`: ingested batches are written by a writer thread, grouped.
    pub ingest_queue: Option<Arc<ingest::IngestQueue>>,
    pub debuginfo: Option<Arc<ingest::DebugInfo>>,
    pub auth_failures: Arc<AtomicU64>,
    /// `baton up`: the CPU of the store's own threads, so that what they spend while an API
    /// call holds the store is counted as the API's (the overhead guard leaves it out).
    pub store_cpu: Option<StoreCpu>,
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
            fleet: None,
            ingest_queue: None,
            tokens: None,
            audit: None,
            ingest: Arc::default(),
            debuginfo: None,
            auth_failures: Arc::default(),
            store_cpu: None,
            requests: Arc::new(AtomicU64::new(0)),
            query_errors: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/explore", get(index))
        .route("/compare", get(index))
        .route("/timeline", get(index))
        .route("/runs", get(index))
        .route("/fleet", get(index))
        .route("/config", get(index))
        .route("/assets/{name}", get(asset))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/flamegraph", get(flamegraph))
        .route("/api/v1/top", get(top))
        .route("/api/v1/timeseries", get(timeseries))
        .route("/api/v1/histograms", get(histograms))
        .route("/api/v1/timeline", get(timeline))
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
        .route("/api/v1/hosts", get(fleet::hosts))
        .route("/api/v1/agents/register", post(fleet::register))
        .route("/api/v1/agents/heartbeat", post(fleet::heartbeat))
        .route(
            "/api/v1/ingest",
            post(ingest::ingest).layer(DefaultBodyLimit::max(INGEST_LIMIT)),
        )
        .route(
            "/api/v1/debuginfo/{build_id}",
            get(ingest::has_debuginfo)
                .put(ingest::put_debuginfo)
                .layer(DefaultBodyLimit::max(DEBUGINFO_LIMIT)),
        )
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ))
        .with_state(state)
}

/// The largest pprof upload.
const INGEST_LIMIT: usize = 64 << 20;
/// The largest debug-info upload.
const DEBUGINFO_LIMIT: usize = 1 << 30;

/// Serves TLS until `shutdown` resolves.
pub async fn serve_tls<F>(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tls::TlsListener::new(listener, config)?;
    axum::serve(l, router(state))
        .with_graceful_shutdown(shutdown)
        .await
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

/// The UI's modules, shipped inside the binary (no CDN, no build step).
const ASSETS: &[(&str, &str)] = &[
    ("app.js", include_str!("../../../web/app.js")),
    ("flame.js", include_str!("../../../web/flame.js")),
    ("timeline.js", include_str!("../../../web/timeline.js")),
    ("pages.js", include_str!("../../../web/pages.js")),
];

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((_, body)) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Who the caller is and what the UI should offer them (the force switch needs admin).
async fn whoami(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<auth::Principal>,
) -> Response {
    Json(json!({
        "name": who.name,
        "role": who.role.name(),
        "can_run": who.role >= auth::Role::Operator && (st.runs.is_some() || st.fleet.is_some()),
        "can_force": who.role >= auth::Role::Admin,
        "fleet": st.fleet.is_some(),
    }))
    .into_response()
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

/// The store's own worker threads (DuckDB runs parts of a query on them): `read` gives their
/// CPU time in ns, and `during_api_ns` sums what they spent while an API call held the store.
/// The store is behind one lock, so that time was spent on the API call's behalf.
#[derive(Clone)]
pub struct StoreCpu {
    pub read: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub during_api_ns: Arc<AtomicU64>,
}

/// Runs a store call off the async threads.
pub(crate) async fn with_store<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    state.requests.fetch_add(1, Ordering::Relaxed);
    let store = state.store.clone();
    let errors = state.query_errors.clone();
    let cpu = state.store_cpu.clone();
    let res = tokio::task::spawn_blocking(move || {
        let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = cpu.as_ref().map(|c| (c.read)());
        let r = f(guard.as_mut());
        if let (Some(c), Some(t0)) = (&cpu, t0) {
            c.during_api_ns
                .fetch_add((c.read)().saturating_sub(t0), Ordering::Relaxed);
        }
        r
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

/// Whether the client takes gzip.
fn gzip_ok(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

/// The flame graph as the UI draws it: the tree in pre-order as three arrays, `n` (index into
/// `names`), `d` (depth, the root at 0) and `v` (total value, rounded), children by name.
/// Gzipped when the client takes it; `min_share` prunes as for [`flat_binary`].
fn flat_flamegraph(
    named: &baton_model::NamedStacks,
    p: &ApiParams,
    min_share: f64,
    gzip: bool,
) -> Response {
    let flat = named.pruned_flat_tree(min_share);
    let mut body = flat_header(named, p, &flat);
    body["n"] = json!(flat.name);
    body["d"] = json!(flat.depth);
    body["v"] = json!(flat
        .values
        .iter()
        .map(|v| v.round() as i64)
        .collect::<Vec<_>>());
    maybe_gzip(body.to_string().into_bytes(), "application/json", gzip)
}

/// What both flat shapes say besides the node arrays: range, unit, total, counts and names.
fn flat_header(
    named: &baton_model::NamedStacks,
    p: &ApiParams,
    flat: &baton_model::FlatTree,
) -> serde_json::Value {
    json!({
        "from_ms": p.query.from_ms,
        "to_ms": p.query.to_ms,
        "unit": named.value_type.as_ref().map(|v| v.unit.clone()).unwrap_or_else(|| "nanoseconds".into()),
        "total": flat.values.first().copied().unwrap_or(0.0),
        "stacks": named.stacks.len(),
        "nodes": flat.name.len(),
        "names": flat.names,
    })
}

/// The body as is, or gzipped (fast level) when the client takes it.
fn maybe_gzip(bytes: Vec<u8>, content_type: &'static str, gzip: bool) -> Response {
    if gzip {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(bytes.len() / 4),
            flate2::Compression::fast(),
        );
        if enc.write_all(&bytes).is_ok() {
            if let Ok(z) = enc.finish() {
                return (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CONTENT_ENCODING, "gzip"),
                    ],
                    z,
                )
                    .into_response();
            }
        }
    }
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

/// The flat tree in binary, what the UI loads: a little-endian u32 length, a JSON header
/// (`from_ms`, `to_ms`, `unit`, `total`, `stacks`, `nodes`, `names`), zero padding to a multiple
/// of 8, then `n` as u32s, `v` as f64s and `d` as u8s (depths past 255 are clamped), each array
/// `nodes` long and the first two 8-byte aligned. Typed arrays read it with no parsing.
/// `min_share` > 0 leaves out nodes under that share of the total, with their subtrees (the
/// UI's first frame asks for what one screen width can show, then for everything).
fn flat_binary(
    named: &baton_model::NamedStacks,
    p: &ApiParams,
    min_share: f64,
    gzip: bool,
) -> Response {
    let t0 = std::time::Instant::now();
    let flat = named.pruned_flat_tree(min_share);
    tracing::debug!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        nodes = flat.name.len(),
        "flat tree built"
    );
    let nodes = flat.name.len();
    let head = flat_header(named, p, &flat).to_string();
    let mut out = Vec::with_capacity(16 + head.len() + nodes * 13 + 16);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(head.as_bytes());
    while out.len() % 8 != 0 {
        out.push(0);
    }
    for &n in &flat.name {
        out.extend_from_slice(&n.to_le_bytes());
    }
    while out.len() % 8 != 0 {
        out.push(0);
    }
    for &v in &flat.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend(flat.depth.iter().map(|&d| d.min(255) as u8));
    maybe_gzip(out, "application/octet-stream", gzip)
}

async fn flamegraph(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let raw = q.clone().unwrap_or_default();
    let p = parse(&st, q)?;
    let query = p.query.clone();
    let t0 = std::time::Instant::now();
    let named = with_store(&st, move |s| s.named_stacks(&query)).await?;
    tracing::debug!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        stacks = named.stacks.len(),
        "stacks named"
    );
    let min_share = raw
        .split('&')
        .find_map(|kv| kv.strip_prefix("min_share="))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    if raw.split('&').any(|kv| kv == "shape=flat") {
        return Ok(flat_flamegraph(&named, &p, min_share, gzip_ok(&headers)));
    }
    if raw.split('&').any(|kv| kv == "shape=flatbin") {
        return Ok(flat_binary(&named, &p, min_share, gzip_ok(&headers)));
    }
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

/// Timeline spans in the range: `filter=pid=N` and `filter=host=H` choose the process (no
/// other filters apply), `limit` caps the spans (default 20,000, at most 200,000).
async fn timeline(State(st): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let raw = q.clone().unwrap_or_default();
    let p = parse(&st, q)?;
    let mut tq = baton_store::TimelineQuery {
        from_ms: p.query.from_ms,
        to_ms: p.query.to_ms,
        host: None,
        pid: None,
        limit: if raw.split('&').any(|kv| kv.starts_with("limit=")) {
            p.limit.min(200_000)
        } else {
            20_000
        },
    };
    for f in &p.query.filters {
        match (f.label.as_str(), f.op) {
            ("pid", baton_store::FilterOp::Eq) => {
                tq.pid =
                    Some(f.value.parse().map_err(|_| {
                        ApiError(StatusCode::BAD_REQUEST, format!("pid {:?}", f.value))
                    })?)
            }
            ("host", baton_store::FilterOp::Eq) => tq.host = Some(f.value.clone()),
            _ => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the timeline takes filter=pid=N and filter=host=H only, not {}",
                        f.label
                    ),
                ))
            }
        }
    }
    let from_ms = tq.from_ms;
    let to_ms = tq.to_ms;
    let t = with_store(&st, move |s| s.timeline(&tq)).await?;
    Ok(Json(json!({
        "from_ms": from_ms,
        "to_ms": to_ms,
        "spans": t.spans,
        "stacks": t.stacks,
        "truncated": t.truncated,
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
    // The backend's own counters (ClickHouse inserts and errors); skipped for this scrape when
    // a slow write holds the store.
    if let Ok(store) = st.store.try_lock() {
        for (name, help, v) in store.metrics() {
            lines.push((name, help, "counter", v));
        }
    }
    if let Some(q) = &st.ingest_queue {
        let (n, sum, max) = q.write_latency.get();
        lines.extend([
            (
                "baton_ingest_queue_rows",
                "Sample rows waiting for the ingest writer.",
                "gauge",
                q.queued_rows.load(Ordering::Relaxed) as f64,
            ),
            (
                "baton_ingest_queue_max_rows",
                "Rows the ingest queue holds before it answers 503.",
                "gauge",
                q.max_rows as f64,
            ),
            (
                "baton_ingest_queue_rejected_total",
                "Ingests answered 503 because the store was behind (the sender retries).",
                "counter",
                q.rejected.load(Ordering::Relaxed) as f64,
            ),
            (
                "baton_store_writes_total",
                "Grouped writes of ingested batches to the store.",
                "counter",
                q.writes.load(Ordering::Relaxed) as f64,
            ),
            (
                "baton_store_write_batches_total",
                "Ingested batches in those writes.",
                "counter",
                q.written_batches.load(Ordering::Relaxed) as f64,
            ),
            (
                "baton_store_write_rows_total",
                "Sample rows in those writes.",
                "counter",
                q.written_rows.load(Ordering::Relaxed) as f64,
            ),
            (
                "baton_store_write_seconds_count",
                "Grouped writes timed.",
                "counter",
                n as f64,
            ),
            (
                "baton_store_write_seconds_sum",
                "Seconds spent in grouped writes.",
                "counter",
                sum,
            ),
            (
                "baton_store_write_seconds_max",
                "Longest grouped write, in seconds.",
                "gauge",
                max,
            ),
        ]);
    }
    let i = &st.ingest;
    let (n, sum, max) = i.latency.get();
    lines.extend([
        (
            "baton_ingest_samples_total",
            "Sample rows stored from ingested batches.",
            "counter",
            i.samples.load(Ordering::Relaxed) as f64,
        ),
        (
            "baton_ingest_batches_total",
            "Ingested batches stored.",
            "counter",
            i.batches.load(Ordering::Relaxed) as f64,
        ),
        (
            "baton_ingest_duplicate_batches_total",
            "Ingested batches already stored under their batch id (not stored again).",
            "counter",
            i.duplicates.load(Ordering::Relaxed) as f64,
        ),
        (
            "baton_ingest_refused_batches_total",
            "Uploads refused as malformed.",
            "counter",
            i.refused.load(Ordering::Relaxed) as f64,
        ),
        (
            "baton_ingest_bytes_total",
            "Bytes of pprof received.",
            "counter",
            i.bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "baton_ingest_request_seconds_count",
            "Ingest calls timed.",
            "counter",
            n as f64,
        ),
        (
            "baton_ingest_request_seconds_sum",
            "Total seconds of ingest calls.",
            "counter",
            sum,
        ),
        (
            "baton_ingest_request_seconds_max",
            "Slowest ingest call, seconds.",
            "gauge",
            max,
        ),
        (
            "baton_auth_failures_total",
            "Calls refused for a missing or unknown token.",
            "counter",
            st.auth_failures.load(Ordering::Relaxed) as f64,
        ),
    ]);
    if let Some(d) = &st.debuginfo {
        lines.push((
            "baton_debuginfo_uploads_total",
            "Debug-info files stored by build ID.",
            "counter",
            d.uploads.load(Ordering::Relaxed) as f64,
        ));
        lines.push((
            "baton_symbols_late_total",
            "Symbols resolved after their samples were stored.",
            "counter",
            d.symbols_added.load(Ordering::Relaxed) as f64,
        ));
    }
    if let Some(f) = &st.fleet {
        let (up, gone, runs) = fleet::counts(f);
        lines.push((
            "baton_fleet_hosts_up",
            "Hosts whose agent heartbeats.",
            "gauge",
            up as f64,
        ));
        lines.push((
            "baton_fleet_hosts_gone",
            "Hosts whose agent stopped heartbeating.",
            "gauge",
            gone as f64,
        ));
        let (n, sum, max) = f.heartbeat_latency.get();
        lines.push((
            "baton_heartbeat_seconds_count",
            "Heartbeats answered without waiting.",
            "counter",
            n as f64,
        ));
        lines.push((
            "baton_heartbeat_seconds_sum",
            "Total seconds of those heartbeats.",
            "counter",
            sum,
        ));
        lines.push((
            "baton_heartbeat_seconds_max",
            "Slowest heartbeat, seconds.",
            "gauge",
            max,
        ));
        let failed = runs.get("failed").copied().unwrap_or(0);
        lines.push((
            "baton_fleet_runs_failed",
            "Fleet runs that failed.",
            "gauge",
            failed as f64,
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
