//! The ClickHouse backend, over ClickHouse's HTTP interface, for fleets that outgrow one DuckDB
//! file.
//!
//! The SQL stays within what ClickHouse 18.16 (Debian's) accepts and current ClickHouse still
//! does: MergeTree tables with the newer `PARTITION BY`/`ORDER BY` syntax, `Nullable` columns
//! outside the sort key, no `Map`, no `LowCardinality`, no query parameters (literals are quoted
//! here), no JOINs (the dictionary lookups are done in Rust, as the DuckDB backend's caches do).
//! Samples and histograms are partitioned by day; retention drops whole days
//! (`Store::drop_before`), since 18.16 has no table TTL.
//!
//! Dictionary tables (frames, stacks, symbols, batches) are `ReplacingMergeTree`s keyed by their
//! id: a row written twice (by two servers, or a retry) collapses when parts merge, and reads
//! take one row per id, so they never double count.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use baton_model::{
    Batch, Frame, FrameKind, Histogram, Labels, NamedStacks, Profile, StackSample, ValueType,
};

use crate::dict::{detail, frame_id, stack_id, symbol_key};
use crate::query::{inline, quote, Dialect, Query};
use crate::{LateSymbol, Point, Store, StoreError, Unsymbolized};

/// Where a ClickHouse store is: `clickhouse://HOST:PORT/DB` (the HTTP port, 8123 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseUrl {
    /// `http://HOST:PORT`.
    pub base: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The table samples are written to and read from: `samples`, or a `Distributed` table over
    /// the shards' `samples` (`?distributed=CLUSTER`).
    pub cluster: Option<String>,
}

impl ClickHouseUrl {
    /// Parses `clickhouse://HOST[:PORT]/DB[?cluster=NAME]`. Credentials come from the
    /// environment (`BATON_CLICKHOUSE_USER`, `BATON_CLICKHOUSE_PASSWORD`) or a file given to the
    /// caller, never from the URL, so they stay out of process listings and logs.
    pub fn parse(url: &str) -> Result<ClickHouseUrl, String> {
        let rest = url.strip_prefix("clickhouse://").ok_or_else(|| {
            format!("{url:?} is not a ClickHouse URL; write clickhouse://HOST:8123/DB")
        })?;
        let (hostport, tail) = rest.split_once('/').unwrap_or((rest, "baton"));
        let (db, query) = tail.split_once('?').unwrap_or((tail, ""));
        if hostport.is_empty() || hostport.contains('@') {
            return Err(format!(
                "{url:?}: give HOST:PORT, and pass credentials through BATON_CLICKHOUSE_USER and BATON_CLICKHOUSE_PASSWORD or --store-credentials"
            ));
        }
        let db = if db.is_empty() { "baton" } else { db };
        if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad database name {db:?}: letters, digits and _"));
        }
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:8123")
        };
        let mut cluster = None;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("cluster", c))
                    if !c.is_empty()
                        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') =>
                {
                    cluster = Some(c.to_string())
                }
                _ => {
                    return Err(format!(
                        "{url:?}: unknown option {kv:?} (known: cluster=NAME)"
                    ))
                }
            }
        }
        Ok(ClickHouseUrl {
            base: format!("http://{hostport}"),
            database: db.to_string(),
            user: std::env::var("BATON_CLICKHOUSE_USER").ok(),
            password: std::env::var("BATON_CLICKHOUSE_PASSWORD").ok(),
            cluster,
        })
    }

    /// Reads `user` and `password` from a file of `user = NAME` / `password = SECRET` lines.
    pub fn with_credentials_file(mut self, path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("user", v)) => self.user = Some(v.to_string()),
                Some(("password", v)) => self.password = Some(v.to_string()),
                _ => {
                    return Err(format!(
                        "{}: expected `user = NAME` or `password = SECRET`, got {line:?}",
                        path.display()
                    ))
                }
            }
        }
        Ok(self)
    }
}

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
];

/// The ClickHouse schema version this build writes.
pub const CLICKHOUSE_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A batch to write, with its id and sending host when it has an id.
type Pending<'a> = (&'a Batch, Option<(&'a str, Option<&'a str>)>);

/// A symbol as read back: function, file, line, inlined chain (JSON).
type SymbolRow = (String, Option<String>, Option<u32>, Option<String>);

/// Statistics of the insert path, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClickHouseStats {
    pub inserts: u64,
    pub insert_errors: u64,
    pub rows_inserted: u64,
}

pub struct ClickHouseStore {
    url: ClickHouseUrl,
    agent: ureq::Agent,
    known_frames: HashSet<u64>,
    known_stacks: HashSet<u64>,
    known_symbols: HashSet<(String, u64)>,
    symbolized_frames: HashSet<u64>,
    known_batches: HashSet<String>,
    frame_cache: crate::dict::IdMap<Frame>,
    name_cache: crate::dict::IdMap<String>,
    inlined_cache: crate::dict::IdMap<Vec<Frame>>,
    stack_cache: crate::dict::IdMap<Vec<u64>>,
    /// Batch ids whose last attempt failed after its samples may have been stored (also read
    /// back at open from `batches` rows of -1).
    suspect: HashSet<String>,
    pub stats: ClickHouseStats,
}

/// Errors of the HTTP interface.
fn ch_err(msg: impl Into<String>) -> StoreError {
    StoreError::ClickHouse(msg.into())
}

/// A TSV field: `\N` is NULL; `\\`, `\t`, `\n` and `\'` are unescaped.
fn unescape(field: &str) -> Option<String> {
    if field == "\\N" {
        return None;
    }
    if !field.contains('\\') {
        return Some(field.to_string());
    }
    let mut out = String::with_capacity(field.len());
    let mut it = field.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    Some(out)
}

/// A TSV field for an insert.
fn esc(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

/// Appends one TSV row.
fn push_row(out: &mut String, fields: &[Option<String>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        esc(out, f.as_deref());
    }
    out.push('\n');
}

/// `row!(out; field, …)`: every field an `Option<String>`.
macro_rules! row {
    ($out:expr; $($f:expr),+ $(,)?) => {
        push_row(&mut $out, &[$($f),+])
    };
}

fn s<T: ToString>(v: T) -> Option<String> {
    Some(v.to_string())
}

impl ClickHouseStore {
    /// Connects, creates the database and migrates the schema. Fails with ClickHouse's own
    /// message when the server is not there or refuses.
    pub fn open(url: ClickHouseUrl) -> Result<ClickHouseStore, StoreError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut st = ClickHouseStore {
            url,
            agent,
            known_frames: HashSet::new(),
            known_stacks: HashSet::new(),
            known_symbols: HashSet::new(),
            symbolized_frames: HashSet::new(),
            known_batches: HashSet::new(),
            frame_cache: Default::default(),
            name_cache: Default::default(),
            inlined_cache: Default::default(),
            stack_cache: Default::default(),
            suspect: HashSet::new(),
            stats: ClickHouseStats::default(),
        };
        let on = st.on_cluster();
        st.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS {} {on}",
            st.url.database
        ))?;
        st.migrate()?;
        st.load_known()?;
        Ok(st)
    }

    /// DDL runs on the node Baton talks to only: `ON CLUSTER` needs ZooKeeper, which a plain
    /// two-shard setup does not have. Each shard's local tables are made by opening it once
    /// without `cluster` (see the README's cluster setup).
    fn on_cluster(&self) -> String {
        String::new()
    }

    fn db(&self) -> &str {
        &self.url.database
    }

    /// Runs a statement (or sends `body` after an `INSERT … FORMAT TabSeparated`).
    fn post(&self, sql: &str, body: &str) -> Result<String, StoreError> {
        // Every statement names its tables with the database; the database parameter is only
        // the default, and cannot be given before the database exists.
        let mut params: Vec<String> = Vec::new();
        if !sql.starts_with("CREATE DATABASE") {
            params.push(format!("database={}", self.url.database));
        }
        if self.url.cluster.is_some() {
            // An insert through a Distributed table returns once every shard has its rows.
            params.push("insert_distributed_sync=1".into());
        }
        let mut url = format!("{}/?{}", self.url.base, params.join("&"));
        let full;
        let payload: &str = if body.is_empty() {
            sql
        } else {
            url.push_str(if params.is_empty() {
                "query="
            } else {
                "&query="
            });
            url.push_str(&form_urlencode(sql));
            full = body;
            full
        };
        let mut req = self.agent.post(&url);
        if let Some(u) = &self.url.user {
            req = req.header("X-ClickHouse-User", u);
        }
        if let Some(p) = &self.url.password {
            req = req.header("X-ClickHouse-Key", p);
        }
        let mut resp = req
            .send(payload.as_bytes())
            .map_err(|e| ch_err(format!("{}: {e}", self.url.base)))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 31)
            .read_to_string()
            .map_err(|e| ch_err(format!("{}: reading the answer: {e}", self.url.base)))?;
        if !(200..300).contains(&status) {
            let first = text.lines().next().unwrap_or("").trim();
            return Err(ch_err(format!(
                "{} answered {status}: {first}",
                self.url.base
            )));
        }
        Ok(text)
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.post(sql, "").map(|_| ())
    }

    /// Rows of a SELECT, as TSV fields.
    fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        let text = self.post(&format!("{sql} FORMAT TabSeparated"), "")?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(unescape).collect())
            .collect())
    }

    /// Rows of a two-column SELECT, parsed; rows that do not parse are left out.
    fn pairs<A: std::str::FromStr, B: std::str::FromStr>(
        &self,
        sql: &str,
    ) -> Result<Vec<(A, B)>, StoreError> {
        Ok(self
            .rows(sql)?
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.first()?.as_ref()?.parse().ok()?,
                    r.get(1)?.as_ref()?.parse().ok()?,
                ))
            })
            .collect())
    }

    fn insert(&mut self, table: &str, tsv: &str, rows: usize) -> Result<(), StoreError> {
        if tsv.is_empty() {
            return Ok(());
        }
        let r = self.post(
            &format!(
                "INSERT INTO {}.{table} FORMAT TabSeparated",
                self.url.database
            ),
            tsv,
        );
        match &r {
            Ok(_) => {
                self.stats.inserts += 1;
                self.stats.rows_inserted += rows as u64;
            }
            Err(_) => self.stats.insert_errors += 1,
        }
        r.map(|_| ())
    }

    /// The sharded tables (`samples`, `histograms`, `spans`) are read from and written to as
    /// the local ones, or the `Distributed` ones over the cluster's shards: the bare name.
    fn sharded(&self, table: &str) -> String {
        match &self.url.cluster {
            Some(_) => table.to_string(),
            None => format!("{table}_local"),
        }
    }

    fn samples_table(&self) -> String {
        format!("{}.{}", self.db(), self.sharded("samples"))
    }

    fn histograms_table(&self) -> String {
        format!("{}.{}", self.db(), self.sharded("histograms"))
    }

    fn spans_table(&self) -> String {
        format!("{}.{}", self.db(), self.sharded("spans"))
    }

    /// The first value of a query's answer, as a number (0 when there is none).
    fn number(&self, sql: &str) -> Result<i64, StoreError> {
        Ok(self
            .rows(sql)?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.number(&format!(
            "SELECT max(version) FROM {}.schema_version",
            self.db()
        ))
    }

    /// Runs a migration's statement, except an `ALTER TABLE DB.T ADD COLUMN C …` whose column
    /// is there already (a migration cut short before its version was recorded runs again).
    fn exec_once(&self, stmt: &str) -> Result<(), StoreError> {
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

    fn migrate(&mut self) -> Result<(), StoreError> {
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

    fn load_known(&mut self) -> Result<(), StoreError> {
        let db = self.db().to_string();
        let ids = |st: &Self, sql: &str| -> Result<Vec<u64>, StoreError> {
            Ok(st
                .rows(sql)?
                .into_iter()
                .filter_map(|r| r.first().cloned().flatten()?.parse().ok())
                .collect())
        };
        self.known_frames = ids(self, &format!("SELECT DISTINCT frame_id FROM {db}.frames"))?
            .into_iter()
            .collect();
        self.known_stacks = ids(self, &format!("SELECT DISTINCT stack_id FROM {db}.stacks"))?
            .into_iter()
            .collect();
        for r in self.rows(&format!(
            "SELECT DISTINCT build_id, file_offset FROM {db}.symbols"
        ))? {
            if let (Some(Some(b)), Some(Some(o))) = (r.first(), r.get(1)) {
                if let Ok(o) = o.parse() {
                    self.known_symbols.insert((b.clone(), o));
                }
            }
        }
        // User frames whose symbol exists, joined here rather than in SQL.
        for r in self.rows(&format!(
            "SELECT frame_id, any(ifNull(build_id, concat('path:', module))), any(address) FROM {db}.frames WHERE kind = 1 GROUP BY frame_id"
        ))? {
            let (Some(Some(fid)), Some(Some(key)), Some(Some(addr))) = (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            if let (Ok(fid), Ok(addr)) = (fid.parse::<u64>(), addr.parse::<u64>()) {
                if self.known_symbols.contains(&(key.clone(), addr)) {
                    self.symbolized_frames.insert(fid);
                }
            }
        }
        // A batch whose only rows say -1 was being written when the last server stopped: it
        // is suspect, and its retry counts what is there (see `write_many`).
        for r in self.rows(&format!(
            "SELECT batch_id, max(sample_rows) FROM {db}.batches GROUP BY batch_id"
        ))? {
            let (Some(Some(id)), Some(Some(rows))) = (r.first(), r.get(1)) else {
                continue;
            };
            if rows.parse::<i64>().is_ok_and(|n| n >= 0) {
                self.known_batches.insert(id.clone());
            } else {
                self.suspect.insert(id.clone());
            }
        }
        Ok(())
    }

    /// Drops the days of samples and histograms wholly older than `before_ms` (retention: 18.16
    /// has no table TTL). Returns the partitions dropped.
    fn drop_days_before(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        let day = |ms: i64| -> i64 {
            let days = ms.div_euclid(86_400_000);
            let (y, m, d) = civil_from_days(days);
            y * 10_000 + m * 100 + d
        };
        let cutoff = day(before_ms);
        let mut dropped = 0;
        for t in ["samples_local", "histograms_local", "spans_local"] {
            let parts = self.rows(&format!(
                "SELECT DISTINCT partition FROM system.parts WHERE database = {} AND table = '{t}' AND active",
                quote(self.db())
            ))?;
            for p in parts
                .into_iter()
                .filter_map(|r| r.first().cloned().flatten())
            {
                if p.parse::<i64>().is_ok_and(|d| d < cutoff) {
                    self.exec(&format!(
                        "ALTER TABLE {}.{t} {} DROP PARTITION {p}",
                        self.db(),
                        self.on_cluster()
                    ))?;
                    dropped += 1;
                }
            }
        }
        Ok(dropped)
    }

    fn write_in(
        &mut self,
        batch: &Batch,
        id: Option<(&str, Option<&str>)>,
    ) -> Result<(), StoreError> {
        self.write_many(&[(batch, id)])
    }

    /// Writes batches together: one INSERT per table for all of them (the ingest writer groups
    /// concurrent batches by size and time). Dictionaries first, then samples, histograms, and
    /// the batch ids last. No transaction spans tables in ClickHouse: a batch whose samples may
    /// have been stored before an error is marked suspect, and its rows are counted (by its
    /// `batch` column) before a retry writes them again.
    fn write_many(&mut self, items: &[Pending<'_>]) -> Result<(), StoreError> {
        let mut frames = String::new();
        let mut nframes = 0;
        let mut symbols = String::new();
        let mut nsymbols = 0;
        let mut stacks = String::new();
        let mut nstacks = 0;
        let mut samples = String::new();
        let mut nsamples = 0;
        let mut new_frames: HashSet<u64> = HashSet::new();
        let mut new_stacks: HashSet<u64> = HashSet::new();
        let mut new_symbols: HashSet<(String, u64)> = HashSet::new();
        let st = self.samples_table();
        let mut hists = String::new();
        let mut nhists = 0;
        let mut spans = String::new();
        let mut nspans = 0;
        let ht = self.histograms_table();
        let spt = self.spans_table();
        for &(batch, id) in items {
            let bid = id.map(|i| i.0).unwrap_or("");
            // A suspect batch may have some of its tables stored already: each table's rows
            // are counted, and a table that has them all is not written again.
            let (already, hists_there, spans_there) = match id {
                Some((bid, _)) if self.suspect.contains(bid) => {
                    let b = quote(bid);
                    let key = format!(
                        "profiler = {} AND ts_ms = {} AND batch = {b}",
                        quote(&batch.profiler),
                        batch.ts_ms
                    );
                    let hist_rows: usize = batch.histograms.iter().map(|h| h.buckets.len()).sum();
                    let starts = batch.spans.iter().map(|s| s.start_us);
                    let spans_there = match (starts.clone().min(), starts.max()) {
                        (Some(a), Some(z)) => self.stored_part(
                            &format!("SELECT count() FROM {spt} WHERE start_us BETWEEN {a} AND {z} AND batch = {b}"),
                            batch.spans.len(),
                            "spans",
                            bid,
                        )?,
                        _ => false,
                    };
                    (
                        self.stored_part(
                            &format!("SELECT count() FROM {st} WHERE {key}"),
                            batch.samples.len(),
                            "samples",
                            bid,
                        )?,
                        hist_rows > 0
                            && self.stored_part(
                                &format!("SELECT count() FROM {ht} WHERE {key}"),
                                hist_rows,
                                "histogram buckets",
                                bid,
                            )?,
                        spans_there,
                    )
                }
                _ => (false, false, false),
            };
            // Each sample's stack id, for the spans that name their sample.
            let mut sids: Vec<u64> = Vec::with_capacity(batch.samples.len());
            for smp in &batch.samples {
                let mut fids = Vec::with_capacity(smp.stack.len());
                for f in &smp.stack {
                    let fid = frame_id(f);
                    if !self.known_frames.contains(&fid) && new_frames.insert(fid) {
                        let name = match f.kind {
                            FrameKind::User => None,
                            _ => f.function.clone(),
                        };
                        let (file, line) = match f.kind {
                            FrameKind::Inlined => (f.file.clone(), f.line.map(|l| l.to_string())),
                            _ => (None, None),
                        };
                        row!(frames; s(fid), s(f.kind.as_u8()), Some(f.module.clone()), f.build_id.clone(), s(f.address), name, file, line);
                        nframes += 1;
                    }
                    if f.kind == FrameKind::User && !self.symbolized_frames.contains(&fid) {
                        if let Some(func) = &f.function {
                            let key = (symbol_key(f), f.address);
                            if !self.known_symbols.contains(&key) && !new_symbols.contains(&key) {
                                row!(symbols; Some(key.0.clone()), s(key.1), Some(func.clone()), f.file.clone(), f.line.map(|l| l.to_string()), None::<String>);
                                nsymbols += 1;
                                new_symbols.insert(key);
                            }
                        }
                    }
                    fids.push(fid);
                }
                let sid = stack_id(&fids);
                sids.push(sid);
                if !self.known_stacks.contains(&sid) && new_stacks.insert(sid) {
                    let text = fids
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    row!(stacks; s(sid), Some(text));
                    nstacks += 1;
                }
                if already {
                    continue;
                }
                let l = |k: &str| smp.labels.get(k).cloned();
                let num = |k: &str| {
                    smp.labels
                        .get(k)
                        .and_then(|v| v.parse::<i32>().ok())
                        .map(|v| v.to_string())
                };
                let vt = batch.value_type_of(smp);
                row!(samples;
                    s(batch.ts_ms), Some(batch.profiler.clone()), Some(vt.kind.clone()), Some(vt.unit.clone()),
                    Some(l("host").unwrap_or_default()), Some(l("service").unwrap_or_default()),
                    Some(l("comm").unwrap_or_default()), num("pid"), num("tid"), l("exe"), l("cgroup"),
                    s(sid), s(smp.value), s(smp.weight),
                    smp.labels.get("run").and_then(|v| v.parse::<i64>().ok()).map(|v| v.to_string()),
                    s(smp.value_index), detail(&smp.labels),
                    Some(bid.to_string()));
                nsamples += 1;
            }
            for h in batch.histograms.iter().filter(|_| !hists_there) {
                let l = |k: &str| h.labels.get(k).cloned();
                for b in &h.buckets {
                    row!(hists;
                        s(batch.ts_ms), Some(batch.profiler.clone()), Some(h.name.clone()), Some(h.unit.clone()),
                        Some(h.key.clone()), Some(l("host").unwrap_or_default()),
                        h.labels.get("pid").and_then(|v| v.parse::<i32>().ok()).map(|v| v.to_string()),
                        Some(l("comm").unwrap_or_default()), l("exe"),
                        h.labels.get("run").and_then(|v| v.parse::<i64>().ok()).map(|v| v.to_string()),
                        Some(l("service").unwrap_or_default()), s(b.le), s(b.count),
                        Some(bid.to_string()));
                    nhists += 1;
                }
            }
            // Spans without a sample of their own take the batch's host and run from its first
            // sample (one batch is one host's, and one run's), as on DuckDB.
            let first = batch.samples.first().map(|s| &s.labels);
            for sp in batch.spans.iter().filter(|_| !spans_there) {
                let own = sp.sample.map(|i| i as usize).filter(|&i| i < sids.len());
                let labels = own.map(|i| &batch.samples[i].labels).or(first);
                let l = |k: &str| labels.and_then(|ls| ls.get(k)).cloned();
                row!(spans;
                    s(sp.start_us), s(sp.dur_us), Some(sp.kind.name().to_string()),
                    Some(batch.profiler.clone()), Some(l("host").unwrap_or_default()),
                    s(sp.pid as i32), s(sp.tid as i32),
                    own.and_then(|i| batch.samples[i].labels.get("comm").cloned()),
                    own.map(|i| sids[i].to_string()),
                    (!sp.label.is_empty()).then(|| sp.label.clone()),
                    l("run").and_then(|v| v.parse::<i64>().ok()).map(|v| v.to_string()),
                    Some(bid.to_string()));
                nspans += 1;
            }
        }
        self.insert("frames", &frames, nframes)?;
        self.insert("symbols", &symbols, nsymbols)?;
        self.insert("stacks", &stacks, nstacks)?;
        let ids: Vec<&str> = items.iter().filter_map(|(_, id)| id.map(|i| i.0)).collect();
        // From the samples' insert on, an error may leave rows stored (a timeout after the
        // commit, or a later table's insert failing): retries must count them first. The
        // batches are marked suspect here, and in the store too (a `batches` row of -1 sample
        // rows, replaced by the final one), so a server restarted in between knows it.
        let mut intent = String::new();
        let mut nintent = 0;
        for &(_, id) in items {
            if let Some((bid, host)) = id.filter(|(bid, _)| !self.suspect.contains(*bid)) {
                row!(intent; Some(bid.to_string()), Some(host.unwrap_or("").to_string()), s(baton_model::time::now_ms()), s(-1));
                nintent += 1;
            }
        }
        self.insert("batches", &intent, nintent)?;
        for bid in &ids {
            self.suspect.insert(bid.to_string());
        }
        self.insert(&self.sharded("samples"), &samples, nsamples)?;
        self.insert(&self.sharded("histograms"), &hists, nhists)?;
        self.insert(&self.sharded("spans"), &spans, nspans)?;
        let mut b = String::new();
        for &(batch, id) in items {
            if let Some((bid, host)) = id {
                row!(b; Some(bid.to_string()), Some(host.unwrap_or("").to_string()), s(baton_model::time::now_ms()), s(batch.samples.len()));
            }
        }
        self.insert("batches", &b, ids.len())?;
        for bid in &ids {
            self.suspect.remove(*bid);
        }
        self.known_frames.extend(new_frames);
        self.known_stacks.extend(new_stacks);
        self.known_symbols.extend(new_symbols);
        for &(batch, _) in items {
            for smp in &batch.samples {
                for f in &smp.stack {
                    if f.kind == FrameKind::User && f.function.is_some() {
                        self.symbolized_frames.insert(frame_id(f));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a suspect batch's rows of one table are all stored (`count_sql` counts them):
    /// none is false, all is true, and a part is an error, since neither writing nor skipping
    /// them would leave the batch whole.
    fn stored_part(
        &self,
        count_sql: &str,
        expected: usize,
        what: &str,
        bid: &str,
    ) -> Result<bool, StoreError> {
        let n = self.number(count_sql)?.max(0) as usize;
        if n != 0 && n != expected {
            return Err(ch_err(format!(
                "batch {bid} has {n} of its {expected} {what} stored already"
            )));
        }
        Ok(n != 0)
    }

    fn stack_totals(&mut self, q: &Query) -> Result<Vec<(u64, f64)>, StoreError> {
        let (wh, params) = q.where_in(Dialect::ClickHouse);
        let sql = inline(
            &format!(
                "SELECT stack_id, sum(value * weight) FROM {} WHERE {wh} GROUP BY stack_id",
                self.samples_table()
            ),
            &params,
        );
        self.pairs(&sql)
    }

    fn value_type(&mut self, q: &Query) -> Result<Option<ValueType>, StoreError> {
        let (wh, params) = q.where_in(Dialect::ClickHouse);
        let sql = inline(
            &format!(
                "SELECT value_type, unit FROM {} WHERE {wh} LIMIT 1",
                self.samples_table()
            ),
            &params,
        );
        Ok(self.rows(&sql)?.into_iter().next().and_then(|r| {
            Some(ValueType {
                kind: r.first()?.clone()?,
                unit: r.get(1)?.clone()?,
            })
        }))
    }

    fn fill_caches(&mut self, ids: &[u64]) -> Result<(), StoreError> {
        let db = self.db().to_string();
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|i| !self.stack_cache.contains_key(i))
            .collect();
        let mut fresh: Vec<(u64, Vec<u64>)> = Vec::with_capacity(missing.len());
        for chunk in missing.chunks(4096) {
            let list = chunk
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            for r in self.rows(&format!(
                "SELECT stack_id, any(frame_ids) FROM {db}.stacks WHERE stack_id IN ({list}) GROUP BY stack_id"
            ))? {
                let (Some(Some(sid)), Some(Some(text))) = (r.first(), r.get(1)) else {
                    continue;
                };
                if let Ok(sid) = sid.parse() {
                    let frames = text.split(',').filter_map(|s| s.parse().ok()).collect();
                    fresh.push((sid, frames));
                }
            }
        }
        // Only the new stacks' frames can be missing: a cached stack's frames were read with it,
        // and clearing the frame caches clears the stack cache too.
        let mut need: Vec<u64> = fresh
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .filter(|f| !self.frame_cache.contains_key(f))
            .collect();
        need.sort_unstable();
        need.dedup();
        for chunk in need.chunks(4096) {
            let list = chunk
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let rows = self.rows(&format!(
                "SELECT frame_id, any(kind), any(module), any(build_id), any(address), any(name), any(file), any(line)
                 FROM {db}.frames WHERE frame_id IN ({list}) GROUP BY frame_id"
            ))?;
            let mut frames: Vec<(u64, Frame)> = Vec::with_capacity(rows.len());
            for r in rows {
                let get = |i: usize| r.get(i).cloned().flatten();
                let Some(fid) = get(0).and_then(|v| v.parse().ok()) else {
                    continue;
                };
                let kind = get(1).and_then(|v| v.parse::<u8>().ok()).unwrap_or(1);
                frames.push((
                    fid,
                    Frame {
                        kind: FrameKind::from_u8(kind).unwrap_or(FrameKind::User),
                        function: get(5),
                        module: get(2).unwrap_or_default(),
                        build_id: get(3),
                        address: get(4).and_then(|v| v.parse().ok()).unwrap_or(0),
                        file: get(6),
                        line: get(7).and_then(|v| v.parse().ok()),
                    },
                ));
            }
            // Symbols of the user frames, by (build ID or path, offset).
            let keys: Vec<(String, u64)> = frames
                .iter()
                .filter(|(_, f)| f.kind == FrameKind::User)
                .map(|(_, f)| (symbol_key(f), f.address))
                .collect();
            let mut syms: HashMap<(String, u64), SymbolRow> = HashMap::new();
            let mut by_key: HashMap<&str, Vec<u64>> = HashMap::new();
            for (k, o) in &keys {
                by_key.entry(k.as_str()).or_default().push(*o);
            }
            for (k, offs) in by_key {
                for part in offs.chunks(4096) {
                    let list = part
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    for r in self.rows(&format!(
                        "SELECT file_offset, any(function), any(file), any(line), any(inlined) FROM {db}.symbols
                         WHERE build_id = {} AND file_offset IN ({list}) GROUP BY file_offset",
                        quote(k)
                    ))? {
                        let get = |i: usize| r.get(i).cloned().flatten();
                        if let (Some(off), Some(func)) = (get(0).and_then(|v| v.parse().ok()), get(1)) {
                            syms.insert(
                                (k.to_string(), off),
                                (func, get(2), get(3).and_then(|v| v.parse().ok()), get(4)),
                            );
                        }
                    }
                }
            }
            for (fid, mut f) in frames {
                let mut inlined = None;
                if f.kind == FrameKind::User {
                    if let Some((func, file, line, inl)) = syms.get(&(symbol_key(&f), f.address)) {
                        f.function = Some(func.clone());
                        f.file = file.clone();
                        f.line = *line;
                        inlined = inl.clone();
                    }
                }
                crate::dict::cache_frame(
                    fid,
                    f,
                    inlined.as_deref(),
                    &mut self.frame_cache,
                    &mut self.name_cache,
                    &mut self.inlined_cache,
                );
            }
        }
        // Stacks join the cache once their frames are in it.
        self.stack_cache.extend(fresh);
        Ok(())
    }
}

/// (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's civil calendar).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Store for ClickHouseStore {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.write_in(batch, None)
    }

    fn write_batch_once(
        &mut self,
        batch: &Batch,
        batch_id: &str,
        host: Option<&str>,
    ) -> Result<bool, StoreError> {
        if self.known_batches.contains(batch_id) {
            return Ok(false);
        }
        self.write_in(batch, Some((batch_id, host)))?;
        self.known_batches.insert(batch_id.to_string());
        Ok(true)
    }

    /// One INSERT per table for the whole group.
    fn write_batches(&mut self, items: &[crate::WriteItem<'_>]) -> Vec<Result<bool, StoreError>> {
        let mut out: Vec<Option<Result<bool, StoreError>>> = Vec::with_capacity(items.len());
        let mut group: Vec<Pending<'_>> = Vec::new();
        let mut in_group = Vec::new();
        let mut ids: HashSet<&str> = HashSet::new();
        for (i, it) in items.iter().enumerate() {
            match it.batch_id {
                // Stored already, or twice in this group: a duplicate.
                Some(id) if self.known_batches.contains(id) || !ids.insert(id) => {
                    out.push(Some(Ok(false)))
                }
                id => {
                    out.push(None);
                    group.push((it.batch, id.map(|b| (b, it.host))));
                    in_group.push(i);
                }
            }
        }
        let r = self.write_many(&group);
        for (k, &i) in in_group.iter().enumerate() {
            out[i] = Some(match &r {
                Ok(()) => {
                    if let Some((id, _)) = group[k].1 {
                        self.known_batches.insert(id.to_string());
                    }
                    Ok(true)
                }
                Err(e) => Err(ch_err(e.to_string())),
            });
        }
        out.into_iter().map(|o| o.unwrap_or(Ok(false))).collect()
    }

    fn profile(&mut self, q: &Query) -> Result<Profile, StoreError> {
        let rows = self.stack_totals(q)?;
        let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        self.fill_caches(&ids)?;
        let value_type = self
            .value_type(q)?
            .unwrap_or_else(ValueType::cpu_nanoseconds);
        let mut p = Profile::new(value_type);
        p.start_unix_ns = q.from_ms.saturating_mul(1_000_000);
        p.duration_ns = (q.to_ms - q.from_ms).saturating_mul(1_000_000);
        for (sid, v) in rows {
            let stack: Vec<Frame> = self
                .stack_cache
                .get(&sid)
                .map(|fids| {
                    fids.iter()
                        .flat_map(|f| {
                            let inl = self.inlined_cache.get(f).into_iter().flatten();
                            inl.chain(self.frame_cache.get(f)).cloned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            p.samples.push(StackSample {
                stack,
                labels: Labels::new(),
                value: v.round() as i64,
                weight: 1.0,
                value_index: 0,
            });
        }
        Ok(p)
    }

    fn named_stacks(&mut self, q: &Query) -> Result<NamedStacks, StoreError> {
        let rows = self.stack_totals(q)?;
        let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        self.fill_caches(&ids)?;
        let value_type = self.value_type(q)?;
        Ok(crate::dict::name_stacks(
            &rows,
            value_type,
            &self.stack_cache,
            &self.name_cache,
            &self.inlined_cache,
        ))
    }

    fn timeseries(&mut self, q: &Query, step_ms: i64) -> Result<Vec<Point>, StoreError> {
        let step = step_ms.max(1);
        let (wh, params) = q.where_in(Dialect::ClickHouse);
        let sql = inline(
            &format!(
                "SELECT intDiv(ts_ms, {step}) * {step} AS b, sum(value * weight) FROM {} WHERE {wh} GROUP BY b ORDER BY b",
                self.samples_table()
            ),
            &params,
        );
        Ok(self
            .pairs(&sql)?
            .into_iter()
            .map(|(ts_ms, value)| Point { ts_ms, value })
            .collect())
    }

    fn label_values(
        &mut self,
        q: &Query,
        label: &str,
        limit: usize,
    ) -> Result<Vec<(String, f64)>, StoreError> {
        let Some(col) = crate::LABEL_COLUMNS.iter().find(|c| **c == label) else {
            return Err(StoreError::UnknownLabel(label.to_string()));
        };
        let (wh, params) = q.where_in(Dialect::ClickHouse);
        let present = match *col {
            "host" | "service" | "comm" => format!("{col} != ''"),
            _ => format!("{col} IS NOT NULL"),
        };
        let sql = inline(
            &format!(
                "SELECT toString({col}) AS l, sum(value * weight) AS v FROM {} WHERE {wh} AND {present} GROUP BY l ORDER BY v DESC, l LIMIT {limit}",
                self.samples_table()
            ),
            &params,
        );
        Ok(self
            .rows(&sql)?
            .into_iter()
            .filter_map(|r| Some((r.first()?.clone()?, r.get(1)?.as_ref()?.parse().ok()?)))
            .collect())
    }

    fn histograms(&mut self, q: &Query) -> Result<Vec<Histogram>, StoreError> {
        let (wh, params) = q.histogram_where_in(Dialect::ClickHouse);
        let sql = inline(
            &format!(
                "SELECT name, unit, key, le, sum(count) FROM {} WHERE {wh} GROUP BY name, unit, key, le ORDER BY name, key, le",
                self.histograms_table()
            ),
            &params,
        );
        let mut out: Vec<Histogram> = Vec::new();
        for r in self.rows(&sql)? {
            let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            let (name, unit, key) = (get(0), get(1), get(2));
            let (Ok(le), Ok(count)) = (get(3).parse::<u64>(), get(4).parse::<f64>()) else {
                continue;
            };
            let same = out
                .last()
                .is_some_and(|h| h.name == name && h.key == key && h.unit == unit);
            if !same {
                let mut labels = Labels::new();
                labels.insert("profiler".into(), q.profiler.clone());
                out.push(Histogram::new(&name, &unit, &key, labels));
            }
            if let Some(h) = out.last_mut() {
                h.add(le, count);
            }
        }
        Ok(out)
    }

    fn drop_before(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        self.drop_days_before(before_ms)
    }

    fn timeline(&mut self, q: &crate::TimelineQuery) -> Result<crate::Timeline, StoreError> {
        let mut sql = format!(
            "SELECT kind, pid, tid, comm, start_us, dur_us, stack_id, label FROM {}
             WHERE start_us < {} AND start_us + dur_us >= {}",
            self.spans_table(),
            q.to_ms.saturating_mul(1000),
            q.from_ms.saturating_mul(1000)
        );
        if let Some(h) = &q.host {
            sql.push_str(&format!(" AND host = {}", quote(h)));
        }
        if let Some(p) = q.pid {
            sql.push_str(&format!(" AND pid = {p}"));
        }
        sql.push_str(&format!(" ORDER BY start_us, tid LIMIT {}", q.limit + 1));
        let mut out = crate::Timeline::default();
        for r in self.rows(&sql)? {
            let get = |i: usize| r.get(i).cloned().flatten();
            let num = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            if out.spans.len() == q.limit {
                out.truncated = true;
                break;
            }
            let sid = get(6).and_then(|v| v.parse::<u64>().ok());
            out.spans.push(crate::TimelineSpan {
                kind: get(0).unwrap_or_default(),
                pid: num(1) as u32,
                tid: num(2) as u32,
                comm: get(3),
                start_us: num(4),
                dur_us: num(5),
                stack: sid.map(|s| s.to_string()),
                label: get(7),
            });
        }
        let sids = crate::dict::span_stack_ids(&out.spans);
        self.fill_caches(&sids)?;
        out.stacks = crate::dict::timeline_stacks(
            &sids,
            &self.stack_cache,
            &self.name_cache,
            &self.inlined_cache,
        );
        Ok(out)
    }

    fn record_runs(&mut self, runs: &[crate::RunRecord]) -> Result<(), StoreError> {
        let mut tsv = String::new();
        for r in runs {
            row!(tsv; s(r.id), Some(r.host.clone()), Some(r.profiler.clone()), Some(r.state.clone()), s(r.recorded_ms), Some(r.json.clone()));
        }
        self.insert("runs", &tsv, runs.len())
    }

    fn run_history(&mut self, limit: usize) -> Result<Vec<crate::RunRecord>, StoreError> {
        let rows = self.rows(&format!(
            "SELECT id, argMax(host, recorded_ms), argMax(profiler, recorded_ms), argMax(state, recorded_ms),
                    max(recorded_ms), argMax(json, recorded_ms)
             FROM {}.runs GROUP BY id ORDER BY id DESC LIMIT {limit}",
            self.db()
        ))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let get = |i: usize| r.get(i).cloned().flatten();
                Some(crate::RunRecord {
                    id: get(0)?.parse().ok()?,
                    host: get(1)?,
                    profiler: get(2)?,
                    state: get(3)?,
                    recorded_ms: get(4)?.parse().ok()?,
                    json: get(5)?,
                })
            })
            .collect())
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, f64)> {
        vec![
            (
                "baton_clickhouse_inserts_total",
                "INSERTs ClickHouse accepted.",
                self.stats.inserts as f64,
            ),
            (
                "baton_clickhouse_insert_errors_total",
                "INSERTs that failed (ClickHouse down or refusing); their batches are retried by their senders.",
                self.stats.insert_errors as f64,
            ),
            (
                "baton_clickhouse_rows_inserted_total",
                "Rows inserted into ClickHouse, all tables.",
                self.stats.rows_inserted as f64,
            ),
        ]
    }

    fn sample_rows(&mut self) -> Result<u64, StoreError> {
        Ok(self
            .number(&format!("SELECT count() FROM {}", self.samples_table()))?
            .max(0) as u64)
    }

    fn unsymbolized(&mut self, limit: usize) -> Result<Vec<Unsymbolized>, StoreError> {
        let db = self.db().to_string();
        let mut by_build: std::collections::BTreeMap<String, (String, Vec<u64>)> =
            Default::default();
        for r in self.rows(&format!(
            "SELECT DISTINCT build_id, module, address FROM {db}.frames WHERE kind = 1 AND isNotNull(build_id) ORDER BY build_id, address"
        ))? {
            let get = |i: usize| r.get(i).cloned().flatten();
            let (Some(b), Some(m), Some(a)) = (get(0), get(1), get(2).and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            if self.known_symbols.contains(&(b.clone(), a)) {
                continue;
            }
            let e = by_build.entry(b).or_insert_with(|| (m, Vec::new()));
            if !e.1.contains(&a) {
                e.1.push(a);
            }
        }
        let mut out = Vec::new();
        let mut left = limit;
        for (build_id, (module, mut offsets)) in by_build {
            if left == 0 {
                break;
            }
            offsets.sort_unstable();
            offsets.truncate(left);
            left -= offsets.len();
            out.push(Unsymbolized {
                build_id,
                module,
                offsets,
            });
        }
        Ok(out)
    }

    fn add_symbols(&mut self, build_id: &str, symbols: &[LateSymbol]) -> Result<usize, StoreError> {
        let mut tsv = String::new();
        let mut new = Vec::new();
        for sym in symbols {
            let key = (build_id.to_string(), sym.offset);
            if self.known_symbols.contains(&key) || new.contains(&key) {
                continue;
            }
            let inlined = (!sym.inlined.is_empty())
                .then(|| serde_json::to_string(&sym.inlined).unwrap_or_default());
            row!(tsv; Some(build_id.to_string()), s(sym.offset), Some(sym.function.clone()), sym.file.clone(), sym.line.map(|l| l.to_string()), inlined);
            new.push(key);
        }
        let added = new.len();
        self.insert("symbols", &tsv, added)?;
        self.known_symbols.extend(new);
        if added > 0 {
            self.frame_cache.clear();
            self.name_cache.clear();
            self.inlined_cache.clear();
            self.stack_cache.clear();
        }
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_inline_credentials() {
        let u = ClickHouseUrl::parse("clickhouse://127.0.0.1:18123/prof").expect("url");
        assert_eq!(
            (u.base.as_str(), u.database.as_str()),
            ("http://127.0.0.1:18123", "prof")
        );
        let u = ClickHouseUrl::parse("clickhouse://ch/").expect("url");
        assert_eq!(
            (u.base.as_str(), u.database.as_str()),
            ("http://ch:8123", "baton")
        );
        let u = ClickHouseUrl::parse("clickhouse://ch:8123/b?cluster=two").expect("url");
        assert_eq!(u.cluster.as_deref(), Some("two"));
        assert!(ClickHouseUrl::parse("clickhouse://u:p@ch/b").is_err());
        assert!(ClickHouseUrl::parse("http://ch/b").is_err());
        assert!(ClickHouseUrl::parse("clickhouse://ch/b;drop").is_err());
    }

    #[test]
    fn tsv_escapes_round_trip() {
        let mut out = String::new();
        esc(&mut out, Some("a\tb\\c\nd"));
        assert_eq!(out, "a\\tb\\\\c\\nd");
        assert_eq!(unescape(&out).as_deref(), Some("a\tb\\c\nd"));
        assert_eq!(unescape("\\N"), None);
    }

    #[test]
    fn days_are_civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
