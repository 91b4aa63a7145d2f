//! The JSON bodies of the API, each shape written down once. The UI (`web/`) and the agents
//! read these; a field renamed here is renamed there too.
//!
//! The run views are with their runs (`runs::RunView`, `fleet::FleetRunView`), the agents'
//! protocol in `fleet::protocol`, and the flame graph's shapes in `flame`.

use baton_model::{Bucket, TopEntry};
use baton_store::{Point, Timeline};
use serde::Serialize;

/// Any failed call: `{"error": "one line"}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /api/v1/whoami`: who the caller is and what the UI offers them.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    pub name: String,
    pub role: &'static str,
    /// Operators and admins, where runs can be started (`baton up` or a fleet server).
    pub can_run: bool,
    /// The force switch needs an admin.
    pub can_force: bool,
    pub fleet: bool,
}

/// `GET /api/v1/top`: the heaviest functions.
#[derive(Debug, Serialize)]
pub struct Top {
    pub unit: String,
    pub total: f64,
    pub rows: Vec<TopEntry>,
}

/// `GET /api/v1/timeline`: thread spans in the range and the stacks they name.
#[derive(Debug, Serialize)]
pub struct TimelineBody {
    pub from_ms: i64,
    pub to_ms: i64,
    #[serde(flatten)]
    pub timeline: Timeline,
}

/// One merged histogram with its quantiles.
#[derive(Debug, Serialize)]
pub struct HistogramSummary {
    pub name: String,
    pub unit: String,
    pub key: String,
    pub count: f64,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub buckets: Vec<Bucket>,
}

/// `GET /api/v1/histograms`.
#[derive(Debug, Serialize)]
pub struct Histograms {
    pub profiler: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub histograms: Vec<HistogramSummary>,
}

/// `GET /api/v1/timeseries`: weighted totals per step.
#[derive(Debug, Serialize)]
pub struct Timeseries {
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    pub points: Vec<Point>,
}

/// One value of a label and its weight.
#[derive(Debug, Serialize)]
pub struct LabelValue {
    pub value: String,
    pub total: f64,
}

/// `GET /api/v1/labels/{label}`: the label's values, most weighted first.
#[derive(Debug, Serialize)]
pub struct LabelValues {
    pub values: Vec<LabelValue>,
}

/// `GET /api/v1/config`: the tree in force and the story of its reloads.
#[derive(Debug, Serialize)]
pub struct ConfigView {
    pub dir: String,
    pub version: Option<String>,
    pub loaded_at_ms: i64,
    pub reloads: u64,
    pub rejected: u64,
    pub last_errors: Vec<String>,
    pub config: Option<baton_config::Config>,
}

/// `POST /api/v1/runs`: the new run's id (201).
#[derive(Debug, Serialize)]
pub struct Created {
    pub id: u64,
}

/// `GET /api/v1/runs`: runs, newest first.
#[derive(Debug, Serialize)]
pub struct RunList<T> {
    pub runs: Vec<T>,
}

/// `GET /api/v1/hosts` (fleet): every host that registered.
#[derive(Debug, Serialize)]
pub struct Hosts<H> {
    pub hosts: Vec<H>,
}

/// `POST /api/v1/ingest`: what became of the batch, and the debug info the server asks for.
#[derive(Debug, Serialize)]
pub struct Ingested {
    pub stored: bool,
    pub duplicate: bool,
    pub batch_id: Option<String>,
    pub sample_rows: u64,
    pub missing_build_ids: Vec<String>,
}

/// `PUT /api/v1/debuginfo/{build_id}` (201).
#[derive(Debug, Serialize)]
pub struct DebugInfoStored {
    pub build_id: String,
    pub bytes: usize,
}

/// `GET /api/v1/debuginfo/{build_id}`: where the server keeps it.
#[derive(Debug, Serialize)]
pub struct DebugInfoFound {
    pub build_id: String,
    pub path: String,
}
