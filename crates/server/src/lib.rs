//! The HTTP API and the embedded web UI, over any [`Store`](baton_store::Store).
//!
//! Routes (all GET unless said):
//! - `/` and the app's pages — the UI, one self-contained page (no CDN);
//! - `/api/v1/flamegraph`, `/api/v1/top`, `/api/v1/timeseries`, `/api/v1/histograms`,
//!   `/api/v1/timeline`, `/api/v1/export`, `/api/v1/labels/{label}` — queries;
//! - `/api/v1/status`, `/api/v1/config`, `/api/v1/whoami`;
//! - `/api/v1/runs` (GET, POST), `/api/v1/runs/{id}`, `/api/v1/runs/{id}/cancel` (POST);
//! - fleet: `/api/v1/hosts`, `/api/v1/agents/{register,heartbeat}` (POST), `/api/v1/ingest`
//!   (POST), `/api/v1/debuginfo/{build_id}` (GET, PUT);
//! - `/metrics` — Prometheus text.
//!
//! Query parameters: `profiler` (default `cpu`), `since` (e.g. `15m`, default `1h`) or
//! `from`/`to` in Unix milliseconds, and any number of `filter=label=value` (`!=`, `~` too).
//!
//! Layout: `state` (what handlers share), `router` (the local and fleet routes), `handlers`
//! (UI, queries, status), [`runs`], [`fleet`], [`ingest`], [`debuginfo`], `flame` (the flame
//! graph's encodings), `metrics` (the `/metrics` table), [`api`] (every JSON body), [`auth`],
//! [`tls`].

pub mod api;
pub mod auth;
pub mod debuginfo;
mod error;
pub mod fdo_fresh;
mod flame;
pub mod fleet;
mod handlers;
pub mod ingest;
pub mod leader;
mod metrics;
mod params;
mod router;
pub mod runs;
mod state;
mod submit;
pub mod tls;

pub use metrics::{MetricLines, MetricsFn};
pub use params::{parse_params, ApiParams};
pub use router::{router, serve, serve_tls};
pub use state::{AppState, LatencyStat, LiveConfig, StoreCpu};
