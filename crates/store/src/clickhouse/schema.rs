//! The ClickHouse schema: its versioned migrations, and applying them (with the `Distributed`
//! tables over the shards' local ones when a cluster is named).

use super::http::Http;
use crate::query::quote;
use crate::StoreError;

/// One version of the ClickHouse schema per entry, as for DuckDB; `{db}` is the database and
/// `{on}` an `ON CLUSTER` clause (empty: see `on_cluster`).
const MIGRATIONS: &[&str] = &[
    // 1: everything DuckDB's seven migrations built, in ClickHouse's terms.
    "CREATE TABLE IF NOT EXISTS {db}.frames {on} (
        frame_id UInt64, kind UInt8, module String, build_id Nullable(String), address UInt64,
        name Nullable(String), file Nullable(String), line Nullable(Int32)
     ) ENGINE = ReplacingMergeTree() ORDER BY frame_id;
     CREATE TABLE IF NOT EXISTS {db}.symbols {on} (
        build_id String, file_offset UInt64, function String, file Nullable(String),
        line Nullable(Int32), inlined Nullable(String)
     ) ENGINE = ReplacingMergeTree() ORDER BY (build_id, file_offset);
     CREATE TABLE IF NOT EXISTS {db}.stacks {on} (stack_id UInt64, frame_ids String)
       ENGINE = ReplacingMergeTree() ORDER BY stack_id;
     CREATE TABLE IF NOT EXISTS {db}.samples_local {on} (
        ts_ms Int64, profiler String, value_type String, unit String, host String,
        service String, comm String, pid Nullable(Int32), tid Nullable(Int32),
        exe Nullable(String), cgroup Nullable(String), stack_id UInt64, value Int64,
        weight Float64, run Nullable(Int64), value_index UInt8, detail Nullable(String),
        batch String
     ) ENGINE = MergeTree()
       PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000)))
       ORDER BY (profiler, value_index, host, service, comm, ts_ms);
     CREATE TABLE IF NOT EXISTS {db}.histograms_local {on} (
        ts_ms Int64, profiler String, name String, unit String, key String, host String,
        pid Nullable(Int32), comm String, exe Nullable(String), run Nullable(Int64),
        service String, le UInt64, count Float64
     ) ENGINE = MergeTree()
       PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000)))
       ORDER BY (profiler, name, key, ts_ms);
     CREATE TABLE IF NOT EXISTS {db}.batches {on} (
        batch_id String, host String, received_ms Int64, sample_rows Int64
     ) ENGINE = ReplacingMergeTree() ORDER BY batch_id",
    // 2: run history (DuckDB's 8): the latest record of a run wins.
    "CREATE TABLE IF NOT EXISTS {db}.runs {on} (
        id UInt64, host String, profiler String, state String, recorded_ms Int64, json String
     ) ENGINE = ReplacingMergeTree(recorded_ms) ORDER BY id",
    // 3: timeline spans (DuckDB's 9): CPU samples, blocks off CPU and requests, each on its
    // thread, with the stack of the sample it belongs to. Read by host and pid over a window.
    "CREATE TABLE IF NOT EXISTS {db}.spans_local {on} (
        start_us Int64, dur_us Int64, kind String, profiler String, host String, pid Int32,
        tid Int32, comm Nullable(String), stack_id Nullable(UInt64), label Nullable(String),
        run Nullable(Int64)
     ) ENGINE = MergeTree()
       PARTITION BY toYYYYMMDD(toDateTime(intDiv(start_us, 1000000)))
       ORDER BY (host, pid, start_us)",
    // 4: histograms and spans carry their batch id, as samples do, so that a retried batch
    // whose first attempt failed part-way is counted per table before any table is written
    // again (see `write_many`). ClickHouse 18 has no `ADD COLUMN IF NOT EXISTS`: `migrate`
    // skips a column that is there already.
    "ALTER TABLE {db}.histograms_local {on} ADD COLUMN batch String DEFAULT '';
     ALTER TABLE {db}.spans_local {on} ADD COLUMN batch String DEFAULT ''",
    // 5: the control plane (DuckDB's 10): one JSON document per (kind, key). The version is
    // `updated_ms`; of equal versions the last inserted row wins, both when parts merge and in
    // the `FINAL` read. A tombstone is a row with `deleted = 1`.
    "CREATE TABLE IF NOT EXISTS {db}.control {on} (
        kind String, key String, updated_ms Int64, deleted UInt8, json String
     ) ENGINE = ReplacingMergeTree(updated_ms) ORDER BY (kind, key)",
];

/// The ClickHouse schema version this build writes.
pub const CLICKHOUSE_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

impl Http {
    /// The schema version in the database.
    pub(super) fn schema_version(&self) -> Result<i64, StoreError> {
        self.number(&format!(
            "SELECT max(version) FROM {}.schema_version",
            self.db()
        ))
    }

    /// Runs a migration's statement, except an `ALTER TABLE DB.T ADD COLUMN C …` whose column
    /// is there already (a migration cut short before its version was recorded runs again).
    pub(super) fn exec_once(&self, stmt: &str) -> Result<(), StoreError> {
        let words: Vec<&str> = stmt.split_whitespace().collect();
        let added = words
            .windows(2)
            .position(|w| w == ["ADD", "COLUMN"])
            .and_then(|i| words.get(i + 2));
        if let (["ALTER", "TABLE", table, ..], Some(column)) = (words.as_slice(), added) {
            if let Some((db, t)) = table.split_once('.') {
                let there = self.number(&format!(
                    "SELECT count() FROM system.columns WHERE database = {} AND table = {} AND name = {}",
                    quote(db),
                    quote(t),
                    quote(column)
                ))?;
                if there != 0 {
                    return Ok(());
                }
            }
        }
        self.exec(stmt)
    }

    /// Creates the database and the schema's tables, and brings them to this build's version.
    /// Every step may run again: a server that raced another one's creation tries again.
    pub(super) fn create(&self) -> Result<(), StoreError> {
        self.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS {} {}",
            self.db(),
            self.on_cluster()
        ))?;
        self.migrate()
    }

    /// Creates the schema's tables, and brings them to this build's version.
    fn migrate(&self) -> Result<(), StoreError> {
        let on = self.on_cluster();
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {}.schema_version {on} (version Int64, applied_ms Int64) ENGINE = MergeTree() ORDER BY version",
            self.db()
        ))?;
        let current = self.schema_version()?;
        if current > CLICKHOUSE_SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: format!("{}/{}", self.url.base, self.db()),
                found: current,
                known: CLICKHOUSE_SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let stmt = stmt.replace("{db}", self.db()).replace("{on}", &on);
                self.exec_once(&stmt)?;
                // A column added to a shard's local table is added to the Distributed table
                // over it too.
                if self.url.cluster.is_some() && stmt.starts_with("ALTER TABLE ") {
                    if let Some(dist) = ["samples", "histograms", "spans"].iter().find_map(|t| {
                        let local = format!("{}.{t}_local ", self.db());
                        stmt.contains(&local)
                            .then(|| stmt.replace(&local, &format!("{}.{t} ", self.db())))
                    }) {
                        self.exec_once(&dist)?;
                    }
                }
            }
            if let Some(c) = self.url.cluster.clone() {
                // Samples, histograms and spans are sharded: a Distributed table over each
                // shard's local one (made by this migration), spread by stack, key or thread.
                for (t, key) in [
                    ("samples", "stack_id"),
                    ("histograms", "cityHash64(key)"),
                    ("spans", "tid"),
                ] {
                    if !sql.contains(&format!("{{db}}.{t}_local ")) {
                        continue;
                    }
                    self.exec(&format!(
                        "CREATE TABLE IF NOT EXISTS {db}.{t} {on} AS {db}.{t}_local ENGINE = Distributed({c}, {db}, {t}_local, {key})",
                        db = self.db()
                    ))?;
                }
            }
            self.exec(&format!(
                "INSERT INTO {}.schema_version VALUES ({}, {})",
                self.db(),
                i + 1,
                baton_model::time::now_ms()
            ))?;
            tracing::info!(version = i + 1, "ClickHouse schema migrated");
        }
        Ok(())
    }
}
