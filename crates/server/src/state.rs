//! The server's shared state: the store, the live config, the runs and fleet handles, and the
//! counters `/metrics` reads; plus the one way handlers reach the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use baton_model::sync::{lock, read};
use baton_store::{Store, StoreError};

use crate::api::{Facts, Profiling};
use crate::error::ApiError;
use crate::leader::Leadership;
use crate::metrics::MetricsFn;
use crate::params::{parse_params, ApiParams};
use crate::{auth, fleet, ingest, runs};

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
        (self.count(), self.sum_s(), self.max_s())
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_s(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn max_s(&self) -> f64 {
        self.max_us.load(Ordering::Relaxed) as f64 / 1e6
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

/// Shared state of the server.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Mutex<Box<dyn Store>>>,
    pub metrics: Option<MetricsFn>,
    /// What this process is, for `/api/v1/status`.
    pub facts: Arc<Facts>,
    /// How profiling stands, for `/api/v1/status`: the driver updates it as it changes.
    pub profiling: Arc<RwLock<Profiling>>,
    pub config: Option<Arc<RwLock<LiveConfig>>>,
    pub runs: Option<runs::RunsHandle>,
    /// Fleet mode (`baton server`): hosts, their agents and the runs placed on them.
    pub fleet: Option<Arc<fleet::Fleet>>,
    /// Whether this server holds the control plane: always for `baton up` and a lone server
    /// ([`Leadership::solo`], the default); with `--etcd`, while its campaign holds the lease.
    pub leadership: Arc<Leadership>,
    /// The accepted tokens; `None` is `--insecure-local` (every caller is the local admin).
    pub tokens: Option<Arc<auth::Tokens>>,
    pub audit: Option<Arc<auth::Audit>>,
    pub ingest: Arc<ingest::IngestStats>,
    /// `baton server`: ingested batches are written by a writer thread, grouped.
    pub ingest_queue: Option<Arc<ingest::IngestQueue>>,
    pub debuginfo: Option<Arc<ingest::DebugInfo>>,
    /// Where fresh FDO profiles are kept (`crate::fdo_fresh`), when this server keeps any.
    pub fdo_dir: Option<std::path::PathBuf>,
    pub auth_failures: Arc<AtomicU64>,
    /// `baton up`: the CPU of the store's own threads, so that what they spend while an API
    /// call holds the store is counted as the API's (the overhead guard leaves it out).
    pub store_cpu: Option<StoreCpu>,
    pub(crate) requests: Arc<AtomicU64>,
    pub(crate) query_errors: Arc<AtomicU64>,
    /// Caps on what an ingested body may expand to and hold.
    pub limits: baton_model::limits::Limits,
    /// The largest debug-info upload read, compressed as sent.
    pub debuginfo_body_limit: u64,
    /// Requests per token: past its rate a token gets 429.
    pub rate: Option<Arc<crate::auth::RateLimit>>,
}

impl AppState {
    pub fn new(
        store: Arc<Mutex<Box<dyn Store>>>,
        metrics: Option<MetricsFn>,
        facts: Facts,
        profiling: Arc<RwLock<Profiling>>,
        config: Option<Arc<RwLock<LiveConfig>>>,
    ) -> Self {
        AppState {
            store,
            metrics,
            facts: Arc::new(facts),
            profiling,
            config,
            runs: None,
            fleet: None,
            leadership: Leadership::solo(),
            ingest_queue: None,
            tokens: None,
            audit: None,
            ingest: Arc::default(),
            debuginfo: None,
            fdo_dir: None,
            auth_failures: Arc::default(),
            store_cpu: None,
            requests: Arc::default(),
            query_errors: Arc::default(),
            limits: baton_model::limits::Limits::default(),
            debuginfo_body_limit: 1 << 30,
            rate: None,
        }
    }

    /// The config in force, if any.
    pub(crate) fn live_config(&self) -> Option<baton_config::Config> {
        self.config.as_ref().and_then(|l| read(l).config.clone())
    }

    /// An API call's query string, with the Stack Schema of the config in force.
    pub(crate) fn params(&self, q: Option<&str>) -> Result<ApiParams, ApiError> {
        let mut p =
            parse_params(q.unwrap_or("")).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
        p.query.schema = self.config.as_ref().and_then(|l| {
            let l = read(l);
            let s = &l.config.as_ref()?.stack_schema;
            (!s.is_empty()).then(|| std::sync::Arc::new(s.clone()))
        });
        Ok(p)
    }
}

/// Runs a store call off the async threads, counting it (and its failure) for `/metrics`.
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
        let mut guard = lock(&store);
        let t0 = cpu.as_ref().map(|c| (c.read)());
        let r = f(guard.as_mut());
        if let (Some(c), Some(t0)) = (&cpu, t0) {
            c.during_api_ns
                .fetch_add((c.read)().saturating_sub(t0), Ordering::Relaxed);
        }
        r
    })
    .await
    .map_err(ApiError::internal)?;
    res.map_err(|e| {
        errors.fetch_add(1, Ordering::Relaxed);
        ApiError::from(e)
    })
}
