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
//! Several servers may share one database. Each keeps a cache of the dictionary ids it knows,
//! so two may write the same frame or stack (harmless, as above); a batch id is checked in the
//! `batches` table, not only in this process's memory (see `write_group`), and migrations are
//! idempotent and retried, so that servers starting together do not fail on each other's DDL.

//!
//! By concern: `url` (where the store is), `http` (the client), `tsv` (the format), `schema`
//! (migrations), `write`, `read` (the shared read path's primitives and the other queries) and
//! `dates` (retention by day).

mod control;
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
use crate::{ControlRecord, LateSymbol, RunRecord, Store, StoreError, Unsymbolized, WriteItem};

/// How long a batch whose intent row another server wrote counts as being written by it
/// ([`StoreError::InFlight`]); after that, the write is taken as abandoned (its server died), and
/// a retry counts the rows it left before writing the rest. One insert waits at most 60 s.
pub const IN_FLIGHT_GRACE_MS: i64 = 30_000;

/// Tries of the schema's creation: servers that start together race on `IF NOT EXISTS`, and
/// the loser's statement fails; the next try finds the table there.
const MIGRATE_TRIES: u32 = 5;

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
        let mut tries = 0;
        while let Err(e) = http.create() {
            tries += 1;
            if tries >= MIGRATE_TRIES || matches!(e, StoreError::TooNew { .. }) {
                return Err(e);
            }
            tracing::debug!(error = %e, "ClickHouse schema creation raced; trying again");
            std::thread::sleep(std::time::Duration::from_millis(100 * u64::from(tries)));
        }
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

    /// Checked against the `batches` table, as a group of one.
    fn write_batch_once(
        &mut self,
        batch: &baton_model::Batch,
        batch_id: &str,
        host: Option<&str>,
    ) -> Result<bool, StoreError> {
        let item = WriteItem {
            batch,
            batch_id: Some(batch_id),
            host,
        };
        self.write_group(&[item]).pop().unwrap_or(Ok(false))
    }

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

    fn put_control(&mut self, records: &[ControlRecord]) -> Result<(), StoreError> {
        self.http.put_control(records)
    }

    fn control(&mut self, kind: &str) -> Result<Vec<ControlRecord>, StoreError> {
        self.http.control(kind)
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
        read::unsymbolized(&self.http, &mut self.dict.symbols, limit)
    }

    fn add_symbols(&mut self, build_id: &str, symbols: &[LateSymbol]) -> Result<usize, StoreError> {
        self.write_symbols(build_id, symbols)
    }
}
