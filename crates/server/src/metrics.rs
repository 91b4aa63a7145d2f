//! `/metrics` in Prometheus text: the agent's own lines, then the server's, declared in one
//! table (name, type, help, where the value comes from), with the store backend's counters at
//! their place in it. A row whose source is absent (no config, not a fleet server) is left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use baton_model::sync::read;

use crate::fleet::Fleet;
use crate::ingest::IngestQueue;
use crate::state::{AppState, LatencyStat};

/// Counter lines for `/metrics`: (name, help, kind, value).
pub type MetricLines = Vec<baton_model::prom::Line>;
/// Produces the agent's metrics at scrape time.
pub type MetricsFn = Arc<dyn Fn() -> MetricLines + Send + Sync>;

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// A row of the table: one metric, or where the backend's counters go.
enum Row {
    Metric {
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        value: fn(&AppState) -> Option<f64>,
    },
    /// The store backend's own counters (ClickHouse inserts and errors); skipped for a scrape
    /// when a slow write holds the store.
    Store,
}

/// Declares the table's rows: `name, kind, "help", |st| value;` (the value `None` when its
/// source is absent), or `store;` for the backend's counters.
macro_rules! rows {
    ($($name:ident $(, $kind:ident, $help:literal, $value:expr)?;)*) => {
        &[$(rows!(@row $name $(, $kind, $help, $value)?)),*]
    };
    (@row store) => { Row::Store };
    (@row $name:ident, $kind:ident, $help:literal, $value:expr) => {
        Row::Metric { name: stringify!($name), kind: $kind, help: $help, value: $value }
    };
}

fn n(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

fn queue(st: &AppState) -> Option<&IngestQueue> {
    st.ingest_queue.as_deref()
}

fn fleet(st: &AppState) -> Option<&Fleet> {
    st.fleet.as_deref()
}

fn count(l: &LatencyStat) -> f64 {
    l.count() as f64
}

/// Every metric of the server, in the order they are written.
#[rustfmt::skip]
const TABLE: &[Row] = rows![
    baton_config_reloads_total, COUNTER, "Config trees accepted after a change on disk.",
        |st| st.config.as_ref().map(|l| read(l).reloads as f64);
    baton_config_rejected_total, COUNTER, "Config trees rejected (the last good one stayed live).",
        |st| st.config.as_ref().map(|l| read(l).rejected as f64);
    store;
    baton_ingest_queue_rows, GAUGE, "Sample rows waiting for the ingest writer.",
        |st| queue(st).map(|q| n(&q.queued_rows));
    baton_ingest_queue_max_rows, GAUGE, "Rows the ingest queue holds before it answers 503.",
        |st| queue(st).map(|q| q.max_rows as f64);
    baton_ingest_queue_rejected_total, COUNTER, "Ingests answered 503 because the store was behind (the sender retries).",
        |st| queue(st).map(|q| n(&q.rejected));
    baton_store_writes_total, COUNTER, "Grouped writes of ingested batches to the store.",
        |st| queue(st).map(|q| n(&q.writes));
    baton_store_write_batches_total, COUNTER, "Ingested batches in those writes.",
        |st| queue(st).map(|q| n(&q.written_batches));
    baton_store_write_rows_total, COUNTER, "Sample rows in those writes.",
        |st| queue(st).map(|q| n(&q.written_rows));
    baton_store_write_seconds_count, COUNTER, "Grouped writes timed.",
        |st| queue(st).map(|q| count(&q.write_latency));
    baton_store_write_seconds_sum, COUNTER, "Seconds spent in grouped writes.",
        |st| queue(st).map(|q| q.write_latency.sum_s());
    baton_store_write_seconds_max, GAUGE, "Longest grouped write, in seconds.",
        |st| queue(st).map(|q| q.write_latency.max_s());
    baton_ingest_samples_total, COUNTER, "Sample rows stored from ingested batches.",
        |st| Some(n(&st.ingest.samples));
    baton_ingest_batches_total, COUNTER, "Ingested batches stored.",
        |st| Some(n(&st.ingest.batches));
    baton_ingest_duplicate_batches_total, COUNTER, "Ingested batches already stored under their batch id (not stored again).",
        |st| Some(n(&st.ingest.duplicates));
    baton_ingest_refused_batches_total, COUNTER, "Uploads refused: malformed, or past a size or count cap.",
        |st| Some(n(&st.ingest.refused));
    baton_ingest_too_large_total, COUNTER, "Uploads refused past a size or count cap (413).",
        |st| Some(n(&st.ingest.too_large));
    baton_ingest_bytes_total, COUNTER, "Bytes of pprof received.",
        |st| Some(n(&st.ingest.bytes));
    baton_ingest_request_seconds_count, COUNTER, "Ingest calls timed.",
        |st| Some(count(&st.ingest.latency));
    baton_ingest_request_seconds_sum, COUNTER, "Total seconds of ingest calls.",
        |st| Some(st.ingest.latency.sum_s());
    baton_ingest_request_seconds_max, GAUGE, "Slowest ingest call, seconds.",
        |st| Some(st.ingest.latency.max_s());
    baton_auth_failures_total, COUNTER, "Calls refused for a missing or unknown token.",
        |st| Some(n(&st.auth_failures));
    baton_debuginfo_uploads_total, COUNTER, "Debug-info files stored by build ID.",
        |st| st.debuginfo.as_ref().map(|d| n(&d.uploads));
    baton_debuginfo_refused_total, COUNTER, "Debug-info uploads refused: malformed, too big, no room, or the wrong build ID.",
        |st| st.debuginfo.as_ref().map(|d| n(&d.refused));
    baton_rate_limited_total, COUNTER, "API calls refused with 429: their token was past its rate.",
        |st| st.rate.as_ref().map(|r| n(&r.refused));
    baton_symbols_late_total, COUNTER, "Symbols resolved after their samples were stored.",
        |st| st.debuginfo.as_ref().map(|d| n(&d.symbols_added));
    baton_fleet_hosts_up, GAUGE, "Hosts whose agent heartbeats.",
        |st| fleet(st).map(|f| f.counts().up as f64);
    baton_fleet_hosts_gone, GAUGE, "Hosts whose agent stopped heartbeating.",
        |st| fleet(st).map(|f| f.counts().gone as f64);
    baton_heartbeat_seconds_count, COUNTER, "Heartbeats answered without waiting.",
        |st| fleet(st).map(|f| count(&f.heartbeat_latency));
    baton_heartbeat_seconds_sum, COUNTER, "Total seconds of those heartbeats.",
        |st| fleet(st).map(|f| f.heartbeat_latency.sum_s());
    baton_heartbeat_seconds_max, GAUGE, "Slowest heartbeat, seconds.",
        |st| fleet(st).map(|f| f.heartbeat_latency.max_s());
    baton_fleet_runs_failed, GAUGE, "Fleet runs that failed.",
        |st| fleet(st).map(|f| f.counts().failed as f64);
    baton_http_api_requests_total, COUNTER, "API requests that touched the store.",
        |st| Some(n(&st.requests));
    baton_http_api_errors_total, COUNTER, "API requests that failed.",
        |st| Some(n(&st.query_errors));
];

/// The text of one scrape.
pub(crate) fn render(st: &AppState) -> String {
    let mut lines: MetricLines = st.metrics.as_ref().map(|f| f()).unwrap_or_default();
    for row in TABLE {
        match row {
            Row::Metric {
                name,
                kind,
                help,
                value,
            } => {
                if let Some(v) = value(st) {
                    lines.push(((*name).into(), *help, *kind, v));
                }
            }
            Row::Store => {
                if let Ok(store) = st.store.try_lock() {
                    lines.extend(
                        store
                            .metrics()
                            .into_iter()
                            .map(|(name, help, v)| (name.into(), help, COUNTER, v)),
                    );
                }
            }
        }
    }
    baton_model::prom::render(&lines)
}

/// `GET /metrics`
pub(crate) async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&st),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, RwLock};
    use std::time::Duration;

    use super::*;
    use crate::ingest::DebugInfo;
    use crate::LiveConfig;

    fn state() -> AppState {
        let store: Box<dyn baton_store::Store> =
            Box::new(baton_store::DuckDbStore::in_memory().expect("store"));
        let agent: MetricsFn =
            Arc::new(|| vec![("baton_agent_x".into(), "From the agent.", GAUGE, 2.0)]);
        AppState::new(
            Arc::new(Mutex::new(store)),
            Some(agent),
            Default::default(),
            Arc::default(),
            None,
        )
    }

    fn names(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect()
    }

    #[test]
    fn absent_sources_are_left_out() {
        let st = state();
        st.ingest.samples.fetch_add(5, Ordering::Relaxed);
        let text = render(&st);
        let got = names(&text);
        assert_eq!(got[0], "baton_agent_x", "the agent's lines come first");
        assert_eq!(got.len(), 1 + 10 + 2, "agent, ingest and auth, http");
        assert!(text.contains(
            "# HELP baton_ingest_samples_total Sample rows stored from ingested batches.\n\
             # TYPE baton_ingest_samples_total counter\nbaton_ingest_samples_total 5\n"
        ));
        assert!(!text.contains("baton_fleet_hosts_up"));
    }

    #[test]
    fn every_row_is_written_when_every_source_is_there() {
        let mut st = state();
        st.config = Some(Arc::new(RwLock::new(LiveConfig {
            reloads: 3,
            ..Default::default()
        })));
        st.ingest_queue = Some(Arc::new(IngestQueue::new(
            100,
            10,
            Duration::from_millis(1),
        )));
        st.debuginfo = Some(Arc::new(DebugInfo::new(
            std::env::temp_dir(),
            Vec::new(),
            None,
        )));
        let check: fn(&str, &BTreeMap<String, String>) -> Result<(), String> = |_, _| Ok(());
        st.fleet = Some(Arc::new(Fleet::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            None,
            || 0,
            check,
        )));
        st.rate = Some(Arc::new(crate::auth::RateLimit::new(1.0, 1.0)));
        let text = render(&st);
        let rows = TABLE
            .iter()
            .filter(|r| matches!(r, Row::Metric { .. }))
            .count();
        assert_eq!(names(&text).len(), 1 + rows);
        assert!(text.contains("\nbaton_config_reloads_total 3\n"));
        assert!(text.contains("\nbaton_ingest_queue_max_rows 100\n"));
        assert!(text.contains("# TYPE baton_heartbeat_seconds_max gauge\n"));
    }
}
