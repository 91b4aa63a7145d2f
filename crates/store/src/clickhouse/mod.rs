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

//!
//! By concern: `url` (where the store is), `http` (the client), `tsv` (the format), `schema`
//! (migrations), `write`, `read` (the shared read path's primitives and the other queries) and
//! `dates` (retention by day).

mod dates;
mod http;
mod read;
mod schema;
mod tsv;
mod url;
mod write;

use std::collections::HashSet;

pub use http::ClickHouseStats;
pub use schema::CLICKHOUSE_SCHEMA_VERSION;
pub use url::ClickHouseUrl;

use crate::dict::Dictionary;
use crate::read::Cache;
use crate::{LateSymbol, RunRecord, Store, StoreError, Unsymbolized, WriteItem};

pub struct ClickHouseStore {
    http: http::Http,
    dict: Dictionary,
    cache: Cache,
    /// Batch ids whose last attempt failed after its samples may have been stored (also read
    /// back at open from `batches` rows of -1).
    suspect: HashSet<String>,
}

impl ClickHouseStore {
    /// Connects, creates the database and migrates the schema. Fails with ClickHouse's own
    /// message when the server is not there or refuses.
    pub fn open(url: ClickHouseUrl) -> Result<ClickHouseStore, StoreError> {
        let http = http::Http::new(url);
        http.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS {} {}",
            http.db(),
            http.on_cluster()
        ))?;
        http.migrate()?;
        let (dict, suspect) = read::load_dictionary(&http)?;
        Ok(ClickHouseStore {
            http,
            dict,
            cache: Cache::default(),
            suspect,
        })
    }

    /// The schema version in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.http.schema_version()
    }

    /// Statistics of the insert path.
    pub fn stats(&self) -> ClickHouseStats {
        self.http.stats
    }
}

impl Store for ClickHouseStore {
    crate::read::shared_store_methods!(http);

    /// One INSERT per table for the whole group.
    fn write_batches(&mut self, items: &[WriteItem<'_>]) -> Vec<Result<bool, StoreError>> {
        self.write_group(items)
    }

    fn drop_before(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        self.http.drop_days_before(before_ms)
    }

    fn record_runs(&mut self, runs: &[RunRecord]) -> Result<(), StoreError> {
        self.write_runs(runs)
    }

    fn run_history(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        read::run_history(&self.http, limit)
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, f64)> {
        let stats = self.http.stats;
        vec![
            (
                "baton_clickhouse_inserts_total",
                "INSERTs ClickHouse accepted.",
                stats.inserts as f64,
            ),
            (
                "baton_clickhouse_insert_errors_total",
                "INSERTs that failed (ClickHouse down or refusing); their batches are retried by their senders.",
                stats.insert_errors as f64,
            ),
            (
                "baton_clickhouse_rows_inserted_total",
                "Rows inserted into ClickHouse, all tables.",
                stats.rows_inserted as f64,
            ),
        ]
    }

    fn sample_rows(&mut self) -> Result<u64, StoreError> {
        let sql = format!("SELECT count() FROM {}", self.http.table("samples"));
        Ok(self.http.number(&sql)?.max(0) as u64)
    }

    fn unsymbolized(&mut self, limit: usize) -> Result<Vec<Unsymbolized>, StoreError> {
        read::unsymbolized(&self.http, &self.dict.symbols, limit)
    }

    fn add_symbols(&mut self, build_id: &str, symbols: &[LateSymbol]) -> Result<usize, StoreError> {
        self.write_symbols(build_id, symbols)
    }
}
