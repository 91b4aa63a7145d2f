//! The routes: the local API (the UI, queries, runs, status, config, metrics) and the fleet's
//! (agents, hosts, ingest, debug info), behind the auth middleware; and the serve loops.
//!
//! Both route sets are always mounted: on a server that is not a fleet server the fleet's
//! routes answer 404 with a reason, as the runs routes do where no profilers run.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::handlers::{fdo, info, query, ui};
use crate::{auth, debuginfo, fleet, ingest, metrics, runs, tls, AppState};

/// The router with every route.
pub fn router(state: AppState) -> Router {
    // The largest bodies read: a pprof upload as sent (compressed or not) is at most what it
    // may decompress to; a debug-info upload is streamed to disk within its own cap.
    let ingest_limit = usize::try_from(state.limits.max_bytes).unwrap_or(usize::MAX);
    let debuginfo_limit = usize::try_from(state.debuginfo_body_limit).unwrap_or(usize::MAX);
    local_routes()
        .merge(fleet_routes(ingest_limit, debuginfo_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ))
        .with_state(state)
}

/// What `baton up` serves: the UI, the queries, the runs (placed on hosts in fleet mode),
/// status, config and metrics.
fn local_routes() -> Router<AppState> {
    let mut r = Router::new();
    for page in ui::PAGES {
        r = r.route(page, get(ui::index));
    }
    r.route("/assets/{name}", get(ui::asset))
        .route("/api/v1/whoami", get(ui::whoami))
        .route("/api/v1/flamegraph", get(query::flamegraph))
        .route("/api/v1/top", get(query::top))
        .route("/api/v1/timeseries", get(query::timeseries))
        .route("/api/v1/histograms", get(query::histograms))
        .route("/api/v1/timeline", get(query::timeline))
        .route("/api/v1/export", get(query::export_profile))
        .route("/api/v1/fdo", get(fdo::fdo))
        .route("/api/v1/fdo/binaries", get(fdo::binaries))
        .route("/api/v1/fdo/profiles", get(fdo::profiles))
        .route(
            "/api/v1/fdo/profiles/{service}/{file}",
            get(fdo::profile_file),
        )
        .route("/api/v1/labels/{label}", get(query::labels))
        .route("/api/v1/schema/check", post(query::schema_check))
        .route("/api/v1/status", get(info::status))
        .route("/api/v1/config", get(info::config))
        .route("/api/v1/runs", get(runs::list).post(runs::submit))
        .route("/api/v1/runs/{id}", get(runs::show))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/metrics", get(metrics::metrics))
}

/// What only `baton server` answers: the agents' calls, the hosts, ingest and debug info.
fn fleet_routes(ingest_limit: usize, debuginfo_limit: usize) -> Router<AppState> {
    Router::new()
        .route("/api/v1/hosts", get(fleet::handlers::hosts))
        .route("/api/v1/tuner", get(fleet::handlers::tuner))
        .route("/api/v1/agents/register", post(fleet::handlers::register))
        .route("/api/v1/agents/heartbeat", post(fleet::handlers::heartbeat))
        .route(
            "/api/v1/ingest",
            post(ingest::ingest).layer(DefaultBodyLimit::max(ingest_limit)),
        )
        .route(
            "/api/v1/debuginfo/{build_id}",
            get(debuginfo::has_debuginfo)
                .put(debuginfo::put_debuginfo)
                .layer(DefaultBodyLimit::max(debuginfo_limit)),
        )
}

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
