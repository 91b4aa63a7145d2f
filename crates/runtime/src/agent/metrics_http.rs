//! The agent's own `/metrics` (and `/healthz`), on `--listen`: the driver's counters plus the
//! outbox's (produced, shipped, dropped, buffered).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_agent::AgentMetrics;

use crate::outbox::{Outbox, OutboxStats};
use crate::Error;

/// One of the outbox's counters.
type Counter = fn(&OutboxStats) -> &AtomicU64;

/// The outbox's counters: name, help, and the counter.
#[rustfmt::skip]
const OUTBOX_COUNTERS: &[(&str, &str, Counter)] = &[
    ("baton_agent_samples_produced_total", "Sample rows the agent's profilers produced (put in the outbox).", |s| &s.produced_rows),
    ("baton_agent_samples_shipped_total", "Sample rows the server acknowledged.", |s| &s.shipped_rows),
    ("baton_agent_samples_dropped_total", "Sample rows dropped: the buffer was full, or the server refused the batch.", |s| &s.dropped_rows),
    ("baton_agent_batches_shipped_total", "Batches the server acknowledged.", |s| &s.shipped_batches),
    ("baton_agent_batches_dropped_total", "Batches dropped (buffer full or refused).", |s| &s.dropped_batches),
    ("baton_agent_batches_refused_total", "Batches the server refused as malformed.", |s| &s.refused_batches),
    ("baton_agent_batches_duplicate_total", "Batches the server had already (a retry after a lost answer).", |s| &s.duplicate_batches),
    ("baton_agent_send_errors_total", "Failed attempts to send a batch (server down or erroring).", |s| &s.send_errors),
    ("baton_agent_debuginfo_uploads_total", "Binaries uploaded for the server's symbolizer.", |s| &s.debuginfo_uploads),
];

/// The metrics server; stopped by [`MetricsServer::shutdown`].
pub(super) struct MetricsServer {
    rt: tokio::runtime::Runtime,
}

impl MetricsServer {
    pub(super) fn shutdown(self) {
        self.rt.shutdown_timeout(Duration::from_millis(200));
    }
}

/// The text of one scrape.
fn render(metrics: &AgentMetrics, outbox: &Outbox) -> String {
    let mut lines = metrics.lines();
    for (name, help, counter) in OUTBOX_COUNTERS {
        let v = counter(&outbox.stats).load(Ordering::Relaxed) as f64;
        lines.push(((*name).into(), help, "counter", v));
    }
    let (pending, bytes) = outbox.pending();
    lines.extend([
        (
            "baton_agent_buffer_batches".into(),
            "Batches waiting on disk.",
            "gauge",
            pending as f64,
        ),
        (
            "baton_agent_buffer_bytes".into(),
            "Bytes waiting on disk.",
            "gauge",
            bytes as f64,
        ),
    ]);
    baton_model::prom::render(&lines)
}

/// Binds `listen` and serves `/metrics` and `/healthz` on a runtime of its own. With `token`,
/// `/metrics` answers only `Authorization: Bearer TOKEN` (401 otherwise).
pub(super) fn serve(
    listen: &str,
    metrics: Arc<AgentMetrics>,
    outbox: Arc<Outbox>,
    token: Option<String>,
) -> Result<(MetricsServer, std::net::SocketAddr), Error> {
    use axum::routing::get;
    let listener = std::net::TcpListener::bind(listen).map_err(|error| Error::Listen {
        addr: listen.to_string(),
        error,
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let text = Arc::new(move || render(&metrics, &outbox));
    let token = Arc::new(token);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let (t, token) = (text.clone(), token.clone());
                async move {
                    use axum::response::IntoResponse;
                    let given = headers
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .map(str::trim);
                    match token.as_deref() {
                        Some(want) if given != Some(want) => (
                            axum::http::StatusCode::UNAUTHORIZED,
                            "a token is needed: send Authorization: Bearer TOKEN \
                             (the agent's --metrics-token-file)\n",
                        )
                            .into_response(),
                        _ => t().into_response(),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    rt.spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics server failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "the metrics listener failed"),
        }
    });
    Ok((MetricsServer { rt }, addr))
}
