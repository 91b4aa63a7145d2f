//! The Store: where every profiler's samples land, and every query reads from.
//!
//! Samples are rows of (time, labels, value, weight, stack id). Stacks live in a dictionary of
//! frame ids; frames are keyed by (kind, module, build ID, address); user-frame symbols live in a
//! table keyed by (build ID, file offset), so symbols found later apply to old samples too.
//! Every query sums `value * weight`. Two backends: DuckDB (embedded, the default) and
//! ClickHouse (over HTTP, for scale-out), behind the one [`Store`] trait.

mod clickhouse;
mod control;
mod dict;
mod duck;
mod query;
mod read;
mod schema;
mod series;
/// A throwaway ClickHouse server, and the benchmarks' hooks: for tests and benchmarks only.
#[cfg(feature = "test-support")]
pub mod testserver;

pub use clickhouse::{
    ClickHouseStats, ClickHouseStore, ClickHouseUrl, CLICKHOUSE_SCHEMA_VERSION, IN_FLIGHT_GRACE_MS,
};
pub use control::ControlRecord;
pub use duck::DuckDbStore;
pub use query::{is_detail_label, Filter, FilterOp, Query, DETAIL_LABELS, LABEL_COLUMNS};
pub use schema::SCHEMA_VERSION;
pub use series::{is_level, Series};

use baton_model::{Batch, Histogram, NamedStacks, Profile};

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path} is not writable: {source} (pick another with --data DIR)")]
    NotWritable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is in use by another baton process; stop it or use another --data directory")]
    Locked { path: String },
    #[error("DuckDB: {0}")]
    Duck(#[from] duckdb::Error),
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    #[error(
        "the store at {path} has schema version {found}, newer than this baton ({known}); \
         upgrade baton or use another --data directory"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error(
        "bad filter label {0:?}; use one of: comm, pid, tid, exe, cgroup, host, run, \
         service, or a profiler's own (state, syscall, op, function, request, an ad-hoc \
         script's keys): lower-case letters, digits and _"
    )]
    UnknownLabel(String),
    #[error("bad filter {0:?}; write it as label=value, label!=value or label~regex")]
    BadFilter(String),
    /// A filter on a Stack Schema tag where stacks are not read (time series, timelines,
    /// histograms, a level's label totals).
    #[error(
        "a filter on the Stack Schema tag `{tag}` applies to flame graphs, top tables, exports \
         and label totals, not to {what}"
    )]
    TagFilter { tag: String, what: &'static str },
    /// Another server sharing the ClickHouse store is writing this batch now (its intent row is
    /// younger than [`IN_FLIGHT_GRACE_MS`]): the sender should retry later, when that write
    /// has either finished (the retry is a duplicate) or been abandoned (the retry completes
    /// it).
    #[error("batch {batch_id} is being written by another server; retry later")]
    InFlight { batch_id: String },
}

/// A time bucket of a series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    pub ts_ms: i64,
    pub value: f64,
}

/// What every backend offers. The DuckDB backend is the embedded default.
pub trait Store: Send {
    /// Writes one window's batch.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), StoreError>;
    /// Weighted samples of the query, aggregated per stack, with frames resolved.
    fn profile(&mut self, q: &Query) -> Result<Profile, StoreError>;
    /// The same stacks as [`Store::profile`], as interned names: the fast path for flame graphs
    /// and top tables.
    fn named_stacks(&mut self, q: &Query) -> Result<NamedStacks, StoreError>;
    /// Weighted totals per time bucket of `step_ms` (a level, see [`is_level`], per window).
    fn timeseries(&mut self, q: &Query, step_ms: i64) -> Result<Vec<Point>, StoreError>;
    /// The same per value of a label column (`pid`, `service`…) when `group_by` names one, in
    /// descending order of their largest point; one series with an empty key otherwise.
    fn series(
        &mut self,
        q: &Query,
        step_ms: i64,
        group_by: Option<&str>,
    ) -> Result<Vec<Series>, StoreError>;
    /// Per rule of `schema`, the query's stacks it matches (a frame matches its pattern) and
    /// their total; and the query's total.
    fn schema_matches(
        &mut self,
        q: &Query,
        schema: &baton_model::StackSchema,
    ) -> Result<(f64, Vec<baton_model::schema::RuleMatch>), StoreError>;
    /// Distinct values of a label in the range, most weighted first.
    fn label_values(
        &mut self,
        q: &Query,
        label: &str,
        limit: usize,
    ) -> Result<Vec<(String, f64)>, StoreError>;
    /// The histograms of the query's profiler in its range, merged per (name, key), each
    /// labelled with `profiler` only.
    fn histograms(&mut self, q: &Query) -> Result<Vec<Histogram>, StoreError>;
    /// Number of sample rows stored (for metrics and tests).
    fn sample_rows(&mut self) -> Result<u64, StoreError>;
    /// Writes a batch that came with an id, in the same transaction as the id: `Ok(false)`
    /// when a batch with this id is stored already (and nothing is written).
    fn write_batch_once(
        &mut self,
        batch: &Batch,
        batch_id: &str,
        host: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Native user frames that have a build ID and no symbol yet, grouped by build ID (with one
    /// module path that had it), at most `limit` offsets in all.
    fn unsymbolized(&mut self, limit: usize) -> Result<Vec<Unsymbolized>, StoreError>;
    /// Stores symbols found later for `build_id`; queries show them at once. Returns how many
    /// were new.
    fn add_symbols(&mut self, build_id: &str, symbols: &[LateSymbol]) -> Result<usize, StoreError>;
    /// Retention: removes samples and histograms older than `before_ms` (ClickHouse drops whole
    /// day partitions, so it keeps up to a day more). Returns what was removed: rows (DuckDB) or
    /// partitions (ClickHouse).
    fn drop_before(&mut self, before_ms: i64) -> Result<usize, StoreError>;
    /// The backend's own counters for `/metrics`: (name, help, value).
    fn metrics(&self) -> Vec<(&'static str, &'static str, f64)> {
        Vec::new()
    }
    /// Writes several batches together (the server's ingest writer groups concurrent ones by
    /// size and time). Each gets its own answer, as from [`Store::write_batch_once`] (or
    /// [`Store::write_batch`] without an id). A backend may write them in one go; this default
    /// writes them one by one.
    fn write_batches(&mut self, items: &[WriteItem<'_>]) -> Vec<Result<bool, StoreError>> {
        items
            .iter()
            .map(|it| match it.batch_id {
                Some(id) => self.write_batch_once(it.batch, id, it.host),
                None => self.write_batch(it.batch).map(|()| true),
            })
            .collect()
    }
    /// Stores runs in their latest state (a run recorded again replaces its earlier record).
    fn record_runs(&mut self, runs: &[RunRecord]) -> Result<(), StoreError>;
    /// The latest record of each stored run, newest id first, at most `limit`.
    fn run_history(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    /// Timeline spans of one process (or host) in a window, with the stacks they name.
    fn timeline(&mut self, q: &TimelineQuery) -> Result<Timeline, StoreError>;
    /// Stores control-plane documents (hosts, queued and running runs, the tuner's state):
    /// per (kind, key), the record with the latest `updated_ms` wins, and of equal ones the
    /// last written (the last in `records`, or the later call). A `deleted` record hides its
    /// key until a later live one. Retention ([`Store::drop_before`]) keeps them; DuckDB
    /// forgets tombstones older than the cut, ClickHouse keeps them (one row per key once
    /// parts merge).
    fn put_control(&mut self, records: &[ControlRecord]) -> Result<(), StoreError>;
    /// The winning live record of each key of `kind`, in key order.
    fn control(&mut self, kind: &str) -> Result<Vec<ControlRecord>, StoreError>;
}

/// What the timeline asks for: spans that overlap `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// Most spans returned; the earliest are kept.
    pub limit: usize,
}

/// One span as the timeline reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TimelineSpan {
    pub kind: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: Option<String>,
    pub start_us: i64,
    pub dur_us: i64,
    /// Key into [`Timeline::stacks`] (a decimal stack id: too wide for JavaScript numbers).
    pub stack: Option<String>,
    pub label: Option<String>,
}

/// Spans in start order, and the stacks they name: function names, leaf first.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timeline {
    pub spans: Vec<TimelineSpan>,
    pub stacks: std::collections::BTreeMap<String, Vec<String>>,
    /// More spans matched than `limit`.
    pub truncated: bool,
}

/// One batch of a grouped write.
#[derive(Debug, Clone, Copy)]
pub struct WriteItem<'a> {
    pub batch: &'a Batch,
    pub batch_id: Option<&'a str>,
    pub host: Option<&'a str>,
}

/// A run as the run history keeps it: its id, where and what it ran, how it ended, and its full
/// JSON view (as `GET /api/v1/runs/{id}` shows it).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: u64,
    pub host: String,
    pub profiler: String,
    pub state: String,
    /// When it was recorded in this state (the latest record of a run wins).
    pub recorded_ms: i64,
    pub json: String,
}

/// Offsets of one build ID that wait for a symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsymbolized {
    pub build_id: String,
    pub module: String,
    pub offsets: Vec<u64>,
}

/// A symbol resolved after its samples were stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LateSymbol {
    pub offset: u64,
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Functions inlined at this address, innermost first: (name, file, line).
    pub inlined: Vec<(String, Option<String>, Option<u32>)>,
}
