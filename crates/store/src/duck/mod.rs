//! The embedded DuckDB backend.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use baton_model::{
    Batch, Frame, FrameKind, Histogram, Labels, NamedStacks, Profile, StackSample, ValueType,
};
use duckdb::types::Value;
use duckdb::{params, params_from_iter, Connection};

use crate::dict::{detail, frame_id, stack_id, symbol_key};
use crate::query::{Param, Query};
use crate::schema::{MIGRATIONS, SCHEMA_VERSION};
use crate::{LateSymbol, Point, Store, StoreError, Unsymbolized};

/// DuckDB's own memory ceiling. Its default is 80% of RAM, far too much for an agent that shares
/// the host with its workload; queries that need more spill to disk.
pub const MEMORY_LIMIT: &str = "256MB";

/// DuckDB file name inside the data directory.
pub const DB_FILE: &str = "baton.duckdb";

pub struct DuckDbStore {
    conn: Connection,
    path: PathBuf,
    known_frames: HashSet<u64>,
    known_stacks: HashSet<u64>,
    known_symbols: HashSet<(String, u64)>,
    /// User frames whose symbol row exists, so the write path checks a u64, not a string key.
    symbolized_frames: HashSet<u64>,
    /// Frames and stacks read back for queries; both are immutable once written.
    frame_cache: crate::dict::IdMap<Frame>,
    /// Display name of each cached frame, computed once.
    name_cache: crate::dict::IdMap<String>,
    /// Frames inlined at a user frame's address, leaf first, from a late symbol.
    inlined_cache: crate::dict::IdMap<Vec<Frame>>,
    stack_cache: crate::dict::IdMap<Vec<u64>>,
    /// Ids of the batches stored through [`Store::write_batch_once`].
    known_batches: HashSet<String>,
}

fn to_values(params: &[Param]) -> Vec<Value> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(s) => Value::Text(s.clone()),
            Param::Int(i) => Value::BigInt(*i),
        })
        .collect()
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
        let mut store = DuckDbStore {
            conn,
            path,
            known_frames: HashSet::new(),
            known_stacks: HashSet::new(),
            known_symbols: HashSet::new(),
            symbolized_frames: HashSet::new(),
            frame_cache: Default::default(),
            name_cache: Default::default(),
            inlined_cache: Default::default(),
            stack_cache: Default::default(),
            known_batches: HashSet::new(),
        };
        store
            .conn
            .execute_batch(&format!("SET memory_limit = '{MEMORY_LIMIT}'"))?;
        store.migrate()?;
        store.load_known()?;
        Ok(store)
    }

    /// Opens a throwaway in-memory store (tests and benchmarks).
    pub fn in_memory() -> Result<DuckDbStore, StoreError> {
        let conn = Connection::open_in_memory()?;
        let mut store = DuckDbStore {
            conn,
            path: PathBuf::from(":memory:"),
            known_frames: HashSet::new(),
            known_stacks: HashSet::new(),
            known_symbols: HashSet::new(),
            symbolized_frames: HashSet::new(),
            frame_cache: Default::default(),
            name_cache: Default::default(),
            inlined_cache: Default::default(),
            stack_cache: Default::default(),
            known_batches: HashSet::new(),
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

    fn load_known(&mut self) -> Result<(), StoreError> {
        let mut st = self.conn.prepare("SELECT frame_id FROM frames")?;
        self.known_frames = st
            .query_map([], |r| r.get::<_, u64>(0))?
            .collect::<Result<_, _>>()?;
        let mut st = self.conn.prepare("SELECT stack_id FROM stacks")?;
        self.known_stacks = st
            .query_map([], |r| r.get::<_, u64>(0))?
            .collect::<Result<_, _>>()?;
        let mut st = self
            .conn
            .prepare("SELECT build_id, file_offset FROM symbols")?;
        self.known_symbols = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut st = self.conn.prepare(
            "SELECT f.frame_id FROM frames f JOIN symbols s
               ON s.build_id = coalesce(f.build_id, 'path:' || f.module) AND s.file_offset = f.address
             WHERE f.kind = 1",
        )?;
        self.symbolized_frames = st
            .query_map([], |r| r.get::<_, u64>(0))?
            .collect::<Result<_, _>>()?;
        let mut st = self.conn.prepare("SELECT batch_id FROM batches")?;
        self.known_batches = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// The underlying connection, for benchmarks and maintenance tools that need raw SQL.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Median milliseconds of the bare `GROUP BY stack_id` over `q`, run `n` times: the engine's
    /// floor, used by the query benchmark as its reference.
    pub fn bench_group_by_ms(&mut self, q: &Query, n: usize) -> Result<f64, StoreError> {
        let (wh, params) = q.where_clause();
        let sql = format!(
            "SELECT stack_id, sum(value * weight) FROM samples WHERE {wh} GROUP BY stack_id"
        );
        let mut times = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let t = std::time::Instant::now();
            let mut st = self.conn.prepare(&sql)?;
            let rows =
                st.query_map(params_from_iter(to_values(&params)), |r| r.get::<_, u64>(0))?;
            let _count = rows.count();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Frames of the given stacks, reading what is not cached.
    fn resolve_stacks(&mut self, ids: &[u64]) -> Result<HashMap<u64, Vec<Frame>>, StoreError> {
        self.fill_caches(ids)?;
        Ok(ids
            .iter()
            .filter_map(|sid| {
                let fids = self.stack_cache.get(sid)?;
                Some((
                    *sid,
                    fids.iter()
                        .flat_map(|f| {
                            let inlined = self.inlined_cache.get(f).into_iter().flatten();
                            inlined.chain(self.frame_cache.get(f)).cloned()
                        })
                        .collect(),
                ))
            })
            .collect())
    }

    /// Weighted totals per stack id for a query: the one SQL aggregation every view starts from.
    fn stack_totals(&mut self, q: &Query) -> Result<Vec<(u64, f64)>, StoreError> {
        let (wh, params) = q.where_clause();
        let sql = format!(
            "SELECT stack_id, sum(value * weight) FROM samples WHERE {wh} GROUP BY stack_id"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The value type of the query's samples (one profiler has one value type).
    fn value_type(&mut self, q: &Query) -> Result<Option<ValueType>, StoreError> {
        let (wh, params) = q.where_clause();
        let sql = format!("SELECT value_type, unit FROM samples WHERE {wh} LIMIT 1");
        let mut st = self.conn.prepare(&sql)?;
        let mut rows = st.query_map(params_from_iter(to_values(&params)), |r| {
            Ok(ValueType {
                kind: r.get(0)?,
                unit: r.get(1)?,
            })
        })?;
        Ok(rows.next().transpose()?)
    }

    /// Loads the stacks and frames of `ids` that are not cached yet.
    fn fill_caches(&mut self, ids: &[u64]) -> Result<(), StoreError> {
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|i| !self.stack_cache.contains_key(i))
            .collect();
        let mut fresh: Vec<(u64, Vec<u64>)> = Vec::with_capacity(missing.len());
        for chunk in missing.chunks(2048) {
            let list = chunk
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let mut st = self.conn.prepare(&format!(
                "SELECT stack_id, frame_ids FROM stacks WHERE stack_id IN ({list})"
            ))?;
            let rows = st.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (sid, text) = row?;
                let frames = text.split(',').filter_map(|s| s.parse().ok()).collect();
                fresh.push((sid, frames));
            }
        }
        // Only the new stacks' frames can be missing: a cached stack's frames were read with it,
        // and clearing the frame caches clears the stack cache too.
        let mut need_frames: Vec<u64> = fresh
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .filter(|f| !self.frame_cache.contains_key(f))
            .collect();
        need_frames.sort_unstable();
        need_frames.dedup();
        for chunk in need_frames.chunks(2048) {
            let list = chunk
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "SELECT f.frame_id, f.kind, f.module, f.build_id, f.address, f.name, s.function,
                        coalesce(f.file, s.file), coalesce(f.line, s.line), s.inlined
                 FROM frames f LEFT JOIN symbols s
                   ON s.build_id = coalesce(f.build_id, 'path:' || f.module) AND s.file_offset = f.address AND f.kind = 1
                 WHERE f.frame_id IN ({list})"
            );
            let mut st = self.conn.prepare(&sql)?;
            let rows = st.query_map([], |r| {
                let kind: u8 = r.get(1)?;
                let name: Option<String> = r.get(5)?;
                let function: Option<String> = r.get(6)?;
                let inlined: Option<String> = r.get(9)?;
                Ok((
                    inlined,
                    r.get::<_, u64>(0)?,
                    Frame {
                        kind: FrameKind::from_u8(kind).unwrap_or(FrameKind::User),
                        function: name.or(function),
                        module: r.get(2)?,
                        build_id: r.get(3)?,
                        address: r.get(4)?,
                        file: r.get(7)?,
                        line: r.get::<_, Option<i32>>(8)?.map(|l| l as u32),
                    },
                ))
            })?;
            for row in rows {
                let (inlined, fid, f) = row?;
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

impl DuckDbStore {
    /// Writes a batch, and its id when it has one, in one transaction.
    fn write_in(
        &mut self,
        batch: &Batch,
        id: Option<(&str, Option<&str>)>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut new_frames = Vec::new();
        let mut new_symbols = Vec::new();
        let mut new_stacks = Vec::new();
        let mut rows = Vec::with_capacity(batch.samples.len());
        for s in &batch.samples {
            let mut fids = Vec::with_capacity(s.stack.len());
            for f in &s.stack {
                let fid = frame_id(f);
                if self.known_frames.insert(fid) {
                    new_frames.push((fid, f));
                }
                // A frame's symbol is written once; a frame first seen unresolved gets its
                // symbol when a later batch resolves it.
                if f.kind == FrameKind::User && !self.symbolized_frames.contains(&fid) {
                    if let Some(func) = &f.function {
                        self.symbolized_frames.insert(fid);
                        let key = (symbol_key(f), f.address);
                        if self.known_symbols.insert(key.clone()) {
                            new_symbols.push((key, func, f));
                        }
                    }
                }
                fids.push(fid);
            }
            let sid = stack_id(&fids);
            if self.known_stacks.insert(sid) {
                new_stacks.push((sid, fids));
            }
            rows.push((sid, s));
        }
        {
            let mut app = tx.appender("frames")?;
            for (fid, f) in &new_frames {
                let name = match f.kind {
                    FrameKind::User => None,
                    _ => f.function.clone(),
                };
                // Only inlined frames keep their own source location here; a user frame's is in
                // `symbols`, keyed by build ID and offset.
                let (file, line) = match f.kind {
                    FrameKind::Inlined => (f.file.clone(), f.line.map(|l| l as i32)),
                    _ => (None, None),
                };
                app.append_row(params![
                    fid,
                    f.kind.as_u8(),
                    f.module,
                    f.build_id,
                    f.address,
                    name,
                    file,
                    line
                ])?;
            }
            let mut app = tx.appender("symbols")?;
            for ((key, off), func, f) in &new_symbols {
                app.append_row(params![
                    key,
                    off,
                    func,
                    f.file,
                    f.line.map(|l| l as i32),
                    None::<String>
                ])?;
            }
            let mut app = tx.appender("stacks")?;
            for (sid, fids) in &new_stacks {
                let text = fids
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                app.append_row(params![sid, text])?;
            }
            let mut app = tx.appender("samples")?;
            for (sid, s) in &rows {
                let l = |k: &str| s.labels.get(k).cloned();
                let num = |k: &str| s.labels.get(k).and_then(|v| v.parse::<i32>().ok());
                let vt = batch.value_type_of(s);
                app.append_row(params![
                    batch.ts_ms,
                    batch.profiler,
                    vt.kind,
                    vt.unit,
                    l("host"),
                    num("pid"),
                    num("tid"),
                    l("comm"),
                    l("exe"),
                    l("cgroup"),
                    sid,
                    s.value,
                    s.weight,
                    s.labels.get("run").and_then(|v| v.parse::<i64>().ok()),
                    l("service"),
                    s.value_index,
                    detail(&s.labels)
                ])?;
            }
            let mut app = tx.appender("spans")?;
            // Spans without a sample of their own take the batch's host and run from its
            // first sample (one batch is one host's, and one run's).
            let first = batch.samples.first().map(|s| &s.labels);
            for sp in &batch.spans {
                let own = sp.sample.and_then(|i| rows.get(i as usize));
                let labels = own.map(|(_, s)| &s.labels).or(first);
                let l = |k: &str| labels.and_then(|ls| ls.get(k)).cloned();
                app.append_row(params![
                    sp.start_us,
                    sp.dur_us,
                    sp.kind.name(),
                    batch.profiler,
                    l("host"),
                    sp.pid as i32,
                    sp.tid as i32,
                    own.and_then(|(_, s)| s.labels.get("comm").cloned()),
                    own.map(|(sid, _)| *sid),
                    (!sp.label.is_empty()).then(|| sp.label.clone()),
                    l("run").and_then(|v| v.parse::<i64>().ok())
                ])?;
            }
            let mut app = tx.appender("histograms")?;
            for h in &batch.histograms {
                let l = |k: &str| h.labels.get(k).cloned();
                for b in &h.buckets {
                    app.append_row(params![
                        batch.ts_ms,
                        batch.profiler,
                        h.name,
                        h.unit,
                        h.key,
                        l("host"),
                        h.labels.get("pid").and_then(|v| v.parse::<i32>().ok()),
                        l("comm"),
                        l("exe"),
                        h.labels.get("run").and_then(|v| v.parse::<i64>().ok()),
                        l("service"),
                        b.le,
                        b.count
                    ])?;
                }
            }
        }
        if let Some((bid, host)) = id {
            tx.execute(
                "INSERT INTO batches VALUES (?, ?, epoch_ms(now()), ?)",
                params![bid, host, batch.samples.len() as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Store for DuckDbStore {
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

    fn unsymbolized(&mut self, limit: usize) -> Result<Vec<Unsymbolized>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT f.build_id, any_value(f.module), list(DISTINCT f.address ORDER BY f.address)
             FROM frames f LEFT JOIN symbols s
               ON s.build_id = f.build_id AND s.file_offset = f.address
             WHERE f.kind = 1 AND f.build_id IS NOT NULL AND s.function IS NULL
             GROUP BY f.build_id ORDER BY f.build_id",
        )?;
        let rows = st.query_map([], |r| {
            let list: Value = r.get(2)?;
            let offsets = match list {
                Value::List(v) => v
                    .into_iter()
                    .filter_map(|x| match x {
                        Value::UBigInt(u) => Some(u),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Ok(Unsymbolized {
                build_id: r.get(0)?,
                module: r.get(1)?,
                offsets,
            })
        })?;
        let mut out = Vec::new();
        let mut left = limit;
        for row in rows {
            let mut u = row?;
            if left == 0 {
                break;
            }
            u.offsets.truncate(left);
            left -= u.offsets.len();
            out.push(u);
        }
        Ok(out)
    }

    fn add_symbols(&mut self, build_id: &str, symbols: &[LateSymbol]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut added = 0;
        {
            let mut app = tx.appender("symbols")?;
            for s in symbols {
                if self.known_symbols.insert((build_id.to_string(), s.offset)) {
                    let inlined = (!s.inlined.is_empty())
                        .then(|| serde_json::to_string(&s.inlined).unwrap_or_default());
                    app.append_row(params![
                        build_id,
                        s.offset,
                        s.function,
                        s.file,
                        s.line.map(|l| l as i32),
                        inlined
                    ])?;
                    added += 1;
                }
            }
        }
        tx.commit()?;
        if added > 0 {
            // Frames read before now were read without these names (and cached stacks are
            // taken to have their frames cached: they go too).
            self.frame_cache.clear();
            self.name_cache.clear();
            self.inlined_cache.clear();
            self.stack_cache.clear();
            let mut st = self.conn.prepare(
                "SELECT f.frame_id FROM frames f JOIN symbols s
                   ON s.build_id = f.build_id AND s.file_offset = f.address
                 WHERE f.kind = 1 AND f.build_id = ?",
            )?;
            let ids: Vec<u64> = st
                .query_map([build_id], |r| r.get::<_, u64>(0))?
                .collect::<Result<_, _>>()?;
            self.symbolized_frames.extend(ids);
        }
        Ok(added)
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

    fn profile(&mut self, q: &Query) -> Result<Profile, StoreError> {
        let rows = self.stack_totals(q)?;
        let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        let mut stacks = self.resolve_stacks(&ids)?;
        let value_type = self
            .value_type(q)?
            .unwrap_or_else(ValueType::cpu_nanoseconds);
        let mut p = Profile::new(value_type);
        p.start_unix_ns = q.from_ms.saturating_mul(1_000_000);
        p.duration_ns = (q.to_ms - q.from_ms).saturating_mul(1_000_000);
        for (sid, v) in rows {
            let stack = stacks.remove(&sid).unwrap_or_default();
            // Weighted sums are already applied; carry them as value with weight 1.
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

    fn timeseries(&mut self, q: &Query, step_ms: i64) -> Result<Vec<Point>, StoreError> {
        let step = step_ms.max(1);
        let (wh, params) = q.where_clause();
        let sql = format!(
            "SELECT (ts_ms // {step}) * {step} AS b, sum(value * weight) FROM samples
             WHERE {wh} GROUP BY b ORDER BY b"
        );
        let mut st = self.conn.prepare(&sql)?;
        let pts = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok(Point {
                    ts_ms: r.get(0)?,
                    value: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(pts)
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
        let (wh, params) = q.where_clause();
        let sql = format!(
            "SELECT CAST({col} AS VARCHAR) AS l, sum(value * weight) AS v FROM samples
             WHERE {wh} AND {col} IS NOT NULL GROUP BY l ORDER BY v DESC LIMIT {limit}"
        );
        let mut st = self.conn.prepare(&sql)?;
        let out = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    fn histograms(&mut self, q: &Query) -> Result<Vec<Histogram>, StoreError> {
        let (wh, params) = q.histogram_where();
        let sql = format!(
            "SELECT name, unit, key, le, sum(count) FROM histograms WHERE {wh}
             GROUP BY name, unit, key, le ORDER BY name, key, le"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows: Vec<(String, String, String, u64, f64)> = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut out: Vec<Histogram> = Vec::new();
        for (name, unit, key, le, count) in rows {
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
        Ok(n + h + s)
    }

    fn timeline(&mut self, q: &crate::TimelineQuery) -> Result<crate::Timeline, StoreError> {
        let mut sql = String::from(
            "SELECT kind, pid, tid, comm, start_us, dur_us, stack_id, label FROM spans
             WHERE start_us < ? AND start_us + dur_us >= ?",
        );
        let mut args: Vec<Value> = vec![
            Value::BigInt(q.to_ms.saturating_mul(1000)),
            Value::BigInt(q.from_ms.saturating_mul(1000)),
        ];
        if let Some(h) = &q.host {
            sql.push_str(" AND host = ?");
            args.push(Value::Text(h.clone()));
        }
        if let Some(p) = q.pid {
            sql.push_str(" AND pid = ?");
            args.push(Value::Int(p as i32));
        }
        sql.push_str(" ORDER BY start_us LIMIT ?");
        args.push(Value::BigInt(q.limit as i64 + 1));
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params_from_iter(args), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i32>(1)?,
                r.get::<_, i32>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<u64>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut out = crate::Timeline::default();
        for row in rows {
            let (kind, pid, tid, comm, start_us, dur_us, sid, label) = row?;
            if out.spans.len() == q.limit {
                out.truncated = true;
                break;
            }
            out.spans.push(crate::TimelineSpan {
                kind,
                pid: pid as u32,
                tid: tid as u32,
                comm,
                start_us,
                dur_us,
                stack: sid.map(|s| s.to_string()),
                label,
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
        let tx = self.conn.transaction()?;
        for r in runs {
            tx.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                params![r.id, r.host, r.profiler, r.state, r.recorded_ms, r.json],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn run_history(&mut self, limit: usize) -> Result<Vec<crate::RunRecord>, StoreError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT id, host, profiler, state, recorded_ms, json FROM runs ORDER BY id DESC LIMIT {limit}"
        ))?;
        let rows = st
            .query_map([], |r| {
                Ok(crate::RunRecord {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    profiler: r.get(2)?,
                    state: r.get(3)?,
                    recorded_ms: r.get(4)?,
                    json: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn sample_rows(&mut self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Filter, FilterOp};

    fn frame(kind: FrameKind, name: Option<&str>, addr: u64) -> Frame {
        Frame {
            kind,
            function: name.map(str::to_string),
            module: if kind == FrameKind::Kernel {
                "[kernel.kallsyms]".into()
            } else {
                "/bin/app".into()
            },
            build_id: (kind == FrameKind::User).then(|| "beef".to_string()),
            address: addr,
            file: None,
            line: None,
        }
    }

    fn batch(ts: i64, comm: &str, leaf: &str, value: i64, weight: f64) -> Batch {
        Batch {
            profiler: "cpu".into(),
            value_type: ValueType::cpu_nanoseconds(),
            more_value_types: Vec::new(),
            histograms: Vec::new(),
            spans: Vec::new(),
            ts_ms: ts,
            samples: vec![StackSample {
                stack: vec![
                    frame(FrameKind::User, Some(leaf), leaf.len() as u64 * 16),
                    frame(FrameKind::User, Some("main"), 1),
                ],
                labels: [
                    ("comm".to_string(), comm.to_string()),
                    ("pid".into(), "7".into()),
                ]
                .into(),
                value,
                weight,
                value_index: 0,
            }],
        }
    }

    fn q(from: i64, to: i64) -> Query {
        Query {
            profiler: "cpu".into(),
            value: None,
            from_ms: from,
            to_ms: to,
            filters: vec![],
        }
    }

    #[test]
    fn several_values_details_and_histograms_are_queryable() {
        let mut s = DuckDbStore::in_memory().expect("store");
        let mut b = batch(1_000, "app", "alloc_site_a", 4096, 1.0);
        b.profiler = "malloc".into();
        b.value_type = ValueType::new("alloc_bytes", "bytes");
        b.more_value_types = vec![ValueType::new("alloc_count", "count")];
        let mut second = b.samples[0].clone();
        second.value = 3;
        second.value_index = 1;
        second.labels.insert("op".into(), "write".into());
        // A label of no built-in profiler (an ad-hoc script's key) is kept and filterable.
        second.labels.insert("fd".into(), "3".into());
        b.samples.push(second);
        let mut h = Histogram::new("call_latency", "nanoseconds", "foo", Labels::new());
        h.add(1023, 5.0);
        h.add(2047, 1.0);
        b.histograms.push(h.clone());
        b.histograms.push(h);
        s.write_batch(&b).expect("write");
        let mut q = q(0, 10_000);
        q.profiler = "malloc".into();
        assert_eq!(s.profile(&q).expect("p").total(), 4096.0);
        assert_eq!(s.profile(&q).expect("p").value_type.kind, "alloc_bytes");
        q.value = Some("alloc_count".into());
        let p = s.profile(&q).expect("p");
        assert_eq!(
            (p.total(), p.value_type.kind.as_str()),
            (3.0, "alloc_count")
        );
        q.filters = vec![Filter::parse("op=write").expect("filter")];
        assert_eq!(s.profile(&q).expect("p").total(), 3.0);
        q.filters = vec![Filter::parse("op=read").expect("filter")];
        assert_eq!(s.profile(&q).expect("p").total(), 0.0);
        q.filters = vec![Filter::parse("fd=3").expect("filter")];
        assert_eq!(s.profile(&q).expect("p").total(), 3.0);
        q.filters = vec![Filter::parse("fd!=3").expect("filter")];
        assert_eq!(s.profile(&q).expect("p").total(), 0.0);
        q.filters = vec![];
        let hs = s.histograms(&q).expect("hist");
        assert_eq!(hs.len(), 1);
        assert_eq!((hs[0].key.as_str(), hs[0].total()), ("foo", 12.0));
        q.filters = vec![Filter::parse("function=bar").expect("filter")];
        assert!(s.histograms(&q).expect("hist").is_empty());
    }

    #[test]
    fn inlined_frames_keep_their_own_name_and_line() {
        let mut s = DuckDbStore::in_memory().expect("open");
        let mut b = batch(1000, "a", "outer", 10, 1.0);
        let outer = b.samples[0].stack[0].clone();
        let inl = |name: &str, line: u32| Frame {
            kind: FrameKind::Inlined,
            function: Some(name.into()),
            file: Some("/src/x.c".into()),
            line: Some(line),
            ..outer.clone()
        };
        // Two functions inlined at the same address as `outer`: three distinct frames.
        b.samples[0].stack.insert(0, inl("mid_inl", 20));
        b.samples[0].stack.insert(0, inl("leaf_inl", 10));
        s.write_batch(&b).expect("write");
        let p = s.profile(&q(0, 10_000)).expect("profile");
        let stack = &p.samples[0].stack;
        assert_eq!(stack.len(), 4, "{stack:?}");
        assert_eq!(stack[0].kind, FrameKind::Inlined);
        assert_eq!(stack[0].function.as_deref(), Some("leaf_inl"));
        assert_eq!(stack[0].line, Some(10));
        assert_eq!(stack[1].function.as_deref(), Some("mid_inl"));
        assert_eq!(stack[1].file.as_deref(), Some("/src/x.c"));
        assert_eq!(stack[2].function.as_deref(), Some("outer"));
        assert_eq!(stack[2].kind, FrameKind::User);
    }

    #[test]
    fn sums_value_times_weight_and_filters() {
        let mut s = DuckDbStore::in_memory().expect("open");
        s.write_batch(&batch(1000, "a", "hot", 10, 3.0)).expect("w");
        s.write_batch(&batch(2000, "a", "hot", 10, 1.0)).expect("w");
        s.write_batch(&batch(2000, "b", "cold", 5, 1.0)).expect("w");
        let p = s.profile(&q(0, 10_000)).expect("profile");
        assert_eq!(p.total(), 45.0);
        let top = p.top_functions();
        assert_eq!(top[0].function, "hot");
        assert_eq!(top[0].self_value, 40.0);
        let mut fq = q(0, 10_000);
        fq.filters.push(Filter::parse("comm=b").expect("f"));
        assert_eq!(s.profile(&fq).expect("p").total(), 5.0);
        // Set filters (service labels resolve to these): in, not in, and the empty set.
        let set = |op, values: &[&str]| Filter {
            label: "comm".into(),
            op,
            value: String::new(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let mut total = |f: Filter| {
            let mut fq = q(0, 10_000);
            fq.filters.push(f);
            s.profile(&fq).expect("p").total()
        };
        assert_eq!(total(set(FilterOp::AnyOf, &["a", "zz"])), 40.0);
        assert_eq!(total(set(FilterOp::AnyOf, &[])), 0.0);
        assert_eq!(total(set(FilterOp::NoneOf, &["a"])), 5.0);
        assert_eq!(total(set(FilterOp::NoneOf, &[])), 45.0);
        let named = s.named_stacks(&q(0, 10_000)).expect("named");
        assert_eq!(named.flame_tree(), p.flame_tree());
        assert_eq!(named.top_functions(), top);
        let ts = s.timeseries(&q(0, 10_000), 1000).expect("ts");
        assert_eq!(
            ts,
            vec![
                Point {
                    ts_ms: 1000,
                    value: 30.0
                },
                Point {
                    ts_ms: 2000,
                    value: 15.0
                }
            ]
        );
        let labels = s.label_values(&q(0, 10_000), "comm", 10).expect("labels");
        assert_eq!(labels[0], ("a".to_string(), 40.0));
        assert_eq!(s.profile(&q(3000, 4000)).expect("p").samples.len(), 0);
    }

    #[test]
    fn survives_reopen_and_records_schema_version() {
        let dir = std::env::temp_dir().join(format!("baton-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = DuckDbStore::open(&dir).expect("open");
            s.write_batch(&batch(1000, "a", "hot", 10, 1.0)).expect("w");
        }
        let mut s = DuckDbStore::open(&dir).expect("reopen");
        assert_eq!(s.schema_version().expect("v"), SCHEMA_VERSION);
        // Writing the same stack again must not collide with the dictionary on disk.
        s.write_batch(&batch(2000, "a", "hot", 10, 1.0))
            .expect("w2");
        assert_eq!(s.sample_rows().expect("rows"), 2);
        let p = s.profile(&q(0, 10_000)).expect("p");
        assert_eq!(p.top_functions()[0].function, "hot");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_user_frames_keep_module_and_offset() {
        let mut s = DuckDbStore::in_memory().expect("open");
        let mut b = batch(1000, "a", "hot", 1, 1.0);
        b.samples[0].stack[0].function = None;
        s.write_batch(&b).expect("w");
        let p = s.profile(&q(0, 10_000)).expect("p");
        assert_eq!(p.samples[0].stack[0].display_name(), "[unknown] app+0x30");
    }

    #[test]
    fn batches_with_ids_are_stored_once_and_late_symbols_name_old_samples() {
        let mut s = DuckDbStore::in_memory().expect("store");
        let mut b = batch(1000, "a", "hot", 5, 1.0);
        b.samples[0].stack[0].function = None;
        assert!(s.write_batch_once(&b, "h1-1", Some("h1")).expect("w"));
        assert!(!s.write_batch_once(&b, "h1-1", Some("h1")).expect("w"));
        assert_eq!(s.sample_rows().expect("rows"), 1);
        let p = s.named_stacks(&q(0, 10_000)).expect("p");
        assert!(p.top_functions()[0].function.starts_with("[unknown]"));
        let waiting = s.unsymbolized(100).expect("u");
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].build_id, "beef");
        assert_eq!(waiting[0].offsets, vec![48]);
        let late = LateSymbol {
            offset: 48,
            function: "hot_loop".into(),
            file: Some("hot.c".into()),
            line: Some(12),
            inlined: vec![("step".into(), Some("hot.h".into()), Some(3))],
        };
        assert_eq!(
            s.add_symbols("beef", std::slice::from_ref(&late))
                .expect("add"),
            1
        );
        assert_eq!(s.add_symbols("beef", &[late]).expect("add"), 0);
        assert!(s.unsymbolized(100).expect("u").is_empty());
        let p = s.profile(&q(0, 10_000)).expect("p");
        let names: Vec<String> = p.samples[0]
            .stack
            .iter()
            .map(|f| f.display_name())
            .collect();
        assert_eq!(names, vec!["step", "hot_loop", "main"]);
        assert_eq!(p.samples[0].stack[0].kind, FrameKind::Inlined);
        assert_eq!(p.samples[0].stack[1].line, Some(12));
        let named = s.named_stacks(&q(0, 10_000)).expect("named");
        let leaf = named.stacks[0].0[0] as usize;
        assert_eq!(named.names[leaf], "step");
    }
}
