//! The embedded DuckDB backend: opening and migrating the file here, writes in `write`, the
//! read primitives and the other queries in `read`.

mod read;
mod write;

use std::path::{Path, PathBuf};

use duckdb::{params, Connection};

use crate::dict::Dictionary;
use crate::read::Cache;
use crate::schema::{MIGRATIONS, SCHEMA_VERSION};
use crate::{ControlRecord, LateSymbol, RunRecord, Store, StoreError, Unsymbolized};

/// DuckDB's own memory ceiling. Its default is 80% of RAM, far too much for an agent that shares
/// the host with its workload; queries that need more spill to disk.
pub const MEMORY_LIMIT: &str = "256MB";

/// DuckDB file name inside the data directory.
pub const DB_FILE: &str = "baton.duckdb";

pub struct DuckDbStore {
    conn: Connection,
    path: PathBuf,
    dict: Dictionary,
    cache: Cache,
}

impl DuckDbStore {
    /// Opens (creating and migrating as needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<DuckDbStore, StoreError> {
        let not_writable = |source| StoreError::NotWritable {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(not_writable)?;
        // DuckDB's own error for a read-only directory is obscure; probe first.
        let probe = dir.join(".baton-write-probe");
        std::fs::write(&probe, b"ok").map_err(not_writable)?;
        let _ = std::fs::remove_file(&probe);
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| {
            if e.to_string().contains("Could not set lock") {
                StoreError::Locked {
                    path: path.display().to_string(),
                }
            } else {
                StoreError::Duck(e)
            }
        })?;
        conn.execute_batch(&format!("SET memory_limit = '{MEMORY_LIMIT}'"))?;
        let mut store = DuckDbStore::with(conn, path)?;
        store.dict = read::load_dictionary(&store.conn)?;
        Ok(store)
    }

    /// Opens a throwaway in-memory store (tests and benchmarks).
    pub fn in_memory() -> Result<DuckDbStore, StoreError> {
        DuckDbStore::with(Connection::open_in_memory()?, PathBuf::from(":memory:"))
    }

    /// A migrated store over `conn`, with nothing known yet.
    fn with(conn: Connection, path: PathBuf) -> Result<DuckDbStore, StoreError> {
        let mut store = DuckDbStore {
            conn,
            path,
            dict: Dictionary::default(),
            cache: Cache::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version in the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT coalesce(max(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL, applied_ms BIGINT NOT NULL)",
        )?;
        let current = self.schema_version()?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.display().to_string(),
                found: current,
                known: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i64 + 1;
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_version VALUES (?, epoch_ms(now()))",
                params![version],
            )?;
            tx.commit()?;
            tracing::info!(version, "store schema migrated");
        }
        Ok(())
    }

    /// The underlying connection, for benchmarks that need raw SQL.
    #[cfg(feature = "test-support")]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Median milliseconds of the bare `GROUP BY stack_id` over `q`, run `n` times: the engine's
    /// floor, used by the query benchmark as its reference.
    #[cfg(feature = "test-support")]
    pub fn bench_group_by_ms(&mut self, q: &crate::Query, n: usize) -> Result<f64, StoreError> {
        let (wh, params) = q.where_clause();
        let sql = format!(
            "SELECT stack_id, sum(value * weight) FROM samples WHERE {wh} GROUP BY stack_id"
        );
        let mut times = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let t = std::time::Instant::now();
            let mut st = self.conn.prepare(&sql)?;
            let rows = st.query_map(duckdb::params_from_iter(read::to_values(&params)), |r| {
                r.get::<_, u64>(0)
            })?;
            let _count = rows.count();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

impl Store for DuckDbStore {
    crate::read::shared_store_methods!(conn);

    /// The id is checked against the ids this store wrote (it is the file's only writer), and
    /// stored in the batch's transaction.
    fn write_batch_once(
        &mut self,
        batch: &baton_model::Batch,
        batch_id: &str,
        host: Option<&str>,
    ) -> Result<bool, StoreError> {
        if self.dict.batches.contains(batch_id) {
            return Ok(false);
        }
        self.write_in(batch, Some((batch_id, host)))?;
        self.dict.batches.insert(batch_id.to_string());
        Ok(true)
    }

    fn unsymbolized(&mut self, limit: usize) -> Result<Vec<Unsymbolized>, StoreError> {
        read::unsymbolized(&self.conn, limit)
    }

    fn add_symbols(&mut self, build_id: &str, symbols: &[LateSymbol]) -> Result<usize, StoreError> {
        self.write_symbols(build_id, symbols)
    }

    fn drop_before(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM samples WHERE ts_ms < ?", params![before_ms])?;
        let h = self
            .conn
            .execute("DELETE FROM histograms WHERE ts_ms < ?", params![before_ms])?;
        let s = self.conn.execute(
            "DELETE FROM spans WHERE start_us < ?",
            params![before_ms.saturating_mul(1000)],
        )?;
        let c = self.conn.execute(
            "DELETE FROM control WHERE deleted AND updated_ms < ?",
            params![before_ms],
        )?;
        Ok(n + h + s + c)
    }

    fn record_runs(&mut self, runs: &[RunRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for r in runs {
            // The latest record wins, as on ClickHouse (`ReplacingMergeTree(recorded_ms)`).
            tx.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET
                   host = excluded.host, profiler = excluded.profiler, state = excluded.state,
                   recorded_ms = excluded.recorded_ms, json = excluded.json
                 WHERE excluded.recorded_ms >= runs.recorded_ms",
                params![r.id, r.host, r.profiler, r.state, r.recorded_ms, r.json],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One upsert per key, kept only where it is not older than the stored record.
    fn put_control(&mut self, records: &[ControlRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for r in crate::control::winners(records) {
            tx.execute(
                "INSERT INTO control VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (kind, key) DO UPDATE SET
                   updated_ms = excluded.updated_ms, deleted = excluded.deleted,
                   json = excluded.json
                 WHERE excluded.updated_ms >= control.updated_ms",
                params![r.kind, r.key, r.updated_ms, r.deleted, r.json],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn control(&mut self, kind: &str) -> Result<Vec<ControlRecord>, StoreError> {
        read::control(&self.conn, kind)
    }

    fn run_history(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        read::run_history(&self.conn, limit)
    }

    fn sample_rows(&mut self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

#[cfg(test)]
mod tests;
