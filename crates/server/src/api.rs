//! The JSON bodies of the API, each shape written down once. The UI (`web/`) and the agents
//! read these; a field renamed here is renamed there too.
//!
//! The run views are with their runs (`runs::RunView`, `fleet::FleetRunView`), the agents'
//! protocol in `fleet::protocol`, and the flame graph's shapes in `flame`.

use std::collections::BTreeMap;

use baton_model::{Bucket, ProfilerInfo, TopEntry};
use baton_store::{Point, Series, Timeline};
use serde::{Deserialize, Serialize};

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

/// `GET /api/v1/timeseries`: weighted totals per step. For a level (`live_bytes`), a step's
/// point is per process the mean of its windows' totals, summed over processes, never a sum
/// across windows. With `group_by`, `series` has one series per value of that label
/// (largest first) and `points` is their sum.
#[derive(Debug, Serialize)]
pub struct Timeseries {
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    /// Whether the value is a level (what is held at a window's end) rather than a total.
    pub level: bool,
    pub points: Vec<Point>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Series>,
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

/// `GET /api/v1/status`: what this process is, how its profiling stands, and the store's rows.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    #[serde(flatten)]
    pub facts: Facts,
    #[serde(flatten)]
    pub profiling: Profiling,
    pub sample_rows: u64,
    /// The config's trace UI template (`[ui] trace_url`), for links from samples to spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
}

/// What a process serving the API is, set once at its start.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(untagged)]
pub enum Facts {
    Up(UpFacts),
    Server(ServerFacts),
    /// Nothing said yet.
    #[default]
    Unknown,
}

/// `baton up`: the whole-host profiler, its event and window, and where data and config live.
#[derive(Debug, Clone, Serialize)]
pub struct UpFacts {
    pub profiler: &'static str,
    pub event: String,
    pub window_s: u64,
    pub data_dir: String,
    pub schema_version: i64,
    pub host: String,
    pub config_dir: Option<String>,
    /// The registry, for the UI's profiler list, values and options.
    pub profilers: Vec<&'static ProfilerInfo>,
}

/// `baton server`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFacts {
    /// Always `server`.
    pub mode: &'static str,
    pub data_dir: String,
    pub schema_version: i64,
    pub config_dir: Option<String>,
    pub profilers: Vec<&'static ProfilerInfo>,
    pub tls: bool,
    pub auth: bool,
}

/// How profiling on this host stands, as the driver updates it; each part appears once the
/// driver has set it (none on a fleet server).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Profiling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_hz: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuous: Option<ContinuousStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead: Option<OverheadStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_budgets: Option<BTreeMap<String, BudgetStatus>>,
    /// The whole-host chain's window, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

impl Profiling {
    /// What an agent's heartbeat says of it.
    pub fn health(&self) -> Health {
        Health {
            overhead: self.overhead.clone(),
            write_budgets: self.write_budgets.clone(),
            frequency_hz: self.frequency_hz,
            continuous: self.continuous.as_ref().map(|c| c.mode.to_string()),
        }
    }
}

/// Continuous profiling: by the config's service rules, or the whole host.
#[derive(Debug, Clone, Serialize)]
pub struct ContinuousStatus {
    /// `services` or `host`.
    pub mode: &'static str,
    pub rules: Vec<RuleStatus>,
}

/// One continuous rule and where its tuning stands.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    pub service: String,
    pub rule: usize,
    pub profiler: String,
    pub probability: f64,
    /// `1 / probability`: what each of its samples weighs.
    pub weight: f64,
    pub duration_s: f64,
    pub slot_s: f64,
    pub target_samples_per_hour: u64,
    pub observed_samples: u64,
    /// Why its profiler cannot run on this host (no NVIDIA driver): it is never drawn here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// The overhead guard's last check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverheadStatus {
    pub percent: f64,
    pub budget_percent: f64,
    pub frequency_cap_hz: Option<u64>,
    pub paused: bool,
    /// Left out as the user's, not profiling's: the API threads' CPU since start.
    pub api_cpu_seconds: f64,
    /// Left out too: what the store's workers spent on the API's queries since start.
    pub store_cpu_for_api_seconds: f64,
}

/// One write budget's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub batches_accepted: u64,
    pub batches_downsampled: u64,
    pub batches_refused: u64,
    pub rows_dropped: u64,
}

/// An agent's health, as its heartbeat carries it and `/api/v1/hosts` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub overhead: Option<OverheadStatus>,
    pub write_budgets: Option<BTreeMap<String, BudgetStatus>>,
    pub frequency_hz: Option<u64>,
    /// The continuous mode: `services` or `host`.
    pub continuous: Option<String>,
}

/// `POST /api/v1/schema/check`'s body: Stack Schema rules to count, as `baton config check`
/// sends a tree's.
#[derive(Debug, Deserialize, Serialize)]
pub struct SchemaCheckRequest {
    pub rules: Vec<baton_model::schema::RuleSpec>,
}

/// What each rule matches in the range: distinct stacks and their share of the total.
#[derive(Debug, Serialize, Deserialize)]
pub struct SchemaCheck {
    pub profiler: String,
    pub total: f64,
    pub rules: Vec<SchemaRuleMatch>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SchemaRuleMatch {
    pub rule: String,
    pub stacks: u64,
    pub total: f64,
    /// Percent of the query's total.
    pub share: f64,
}
