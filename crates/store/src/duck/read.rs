//! DuckDB reads: the shared read path's primitives (with bound parameters and a join for
//! symbols), the dictionary loaded at open, and the queries only this backend phrases its way.

use baton_model::{Frame, FrameKind, ValueType};
use duckdb::types::Value;
use duckdb::{params_from_iter, Connection};

use crate::dict::Dictionary;
use crate::query::{group_expr, Dialect, Param, Query};
use crate::read::{id_list, Backend, BucketRow, StackServiceRow, StoredFrame, Totals};
use crate::series::{level_totals, level_totals_sql, series_sql, LevelKey, SeriesRow};
use crate::{ControlRecord, RunRecord, StoreError, TimelineQuery, TimelineSpan, Unsymbolized};

pub(super) fn to_values(params: &[Param]) -> Vec<Value> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(s) => Value::Text(s.clone()),
            Param::Int(i) => Value::BigInt(*i),
        })
        .collect()
}

impl Backend for Connection {
    const ID_CHUNK: usize = 2048;

    fn stack_totals(&mut self, q: &Query) -> Result<Vec<(u64, f64)>, StoreError> {
        let (wh, params) = q.where_clause();
        let sql = format!(
            "SELECT stack_id, sum(value * weight) FROM samples WHERE {wh} GROUP BY stack_id"
        );
        let mut st = self.prepare(&sql)?;
        let rows = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn stack_service_totals(
        &mut self,
        q: &Query,
        label: Option<&str>,
    ) -> Result<Vec<StackServiceRow>, StoreError> {
        let (wh, params) = q.where_clause();
        let l = label.map_or("''".to_string(), |l| group_expr(l, Dialect::DuckDb));
        let sql = format!(
            "SELECT stack_id, coalesce(service, '') AS s, {l} AS l, sum(value * weight)
             FROM samples WHERE {wh} GROUP BY stack_id, s, l"
        );
        let mut st = self.prepare(&sql)?;
        let rows = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn level_totals(&mut self, q: &Query, key: LevelKey) -> Result<Totals, StoreError> {
        let [(keys, p1), (windows, p2)] = level_totals_sql(q, Dialect::DuckDb, "samples", key);
        let mut st = self.prepare(&keys)?;
        let keys = st
            .query_map(params_from_iter(to_values(&p1)), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut st = self.prepare(&windows)?;
        let windows = st
            .query_map(params_from_iter(to_values(&p2)), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as f64))
            })?
            .collect::<Result<_, _>>()?;
        Ok(level_totals(keys, windows))
    }

    fn value_type(&mut self, q: &Query) -> Result<Option<ValueType>, StoreError> {
        let (wh, params) = q.where_clause();
        let sql = format!("SELECT value_type, unit FROM samples WHERE {wh} LIMIT 1");
        let mut st = self.prepare(&sql)?;
        let mut rows = st.query_map(params_from_iter(to_values(&params)), |r| {
            Ok(ValueType {
                kind: r.get(0)?,
                unit: r.get(1)?,
            })
        })?;
        Ok(rows.next().transpose()?)
    }

    fn stacks(&mut self, ids: &[u64]) -> Result<Vec<(u64, String)>, StoreError> {
        let mut st = self.prepare(&format!(
            "SELECT stack_id, frame_ids FROM stacks WHERE stack_id IN ({})",
            id_list(ids)
        ))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn frames(&mut self, ids: &[u64]) -> Result<Vec<StoredFrame>, StoreError> {
        let sql = format!(
            "SELECT f.frame_id, f.kind, f.module, f.build_id, f.address, f.name, s.function,
                    coalesce(f.file, s.file), coalesce(f.line, s.line), s.inlined
             FROM frames f LEFT JOIN symbols s
               ON s.build_id = coalesce(f.build_id, 'path:' || f.module) AND s.file_offset = f.address AND f.kind = 1
             WHERE f.frame_id IN ({})",
            id_list(ids)
        );
        let mut st = self.prepare(&sql)?;
        let rows = st
            .query_map([], |r| {
                let kind: u8 = r.get(1)?;
                let name: Option<String> = r.get(5)?;
                let function: Option<String> = r.get(6)?;
                let frame = Frame {
                    kind: FrameKind::from_u8(kind).unwrap_or(FrameKind::User),
                    function: name.or(function),
                    module: r.get(2)?,
                    build_id: r.get(3)?,
                    address: r.get(4)?,
                    file: r.get(7)?,
                    line: r.get::<_, Option<i32>>(8)?.map(|l| l as u32),
                };
                Ok((r.get(0)?, frame, r.get(9)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn histogram_buckets(&mut self, q: &Query) -> Result<Vec<BucketRow>, StoreError> {
        let (wh, params) = q.histogram_where();
        let sql = format!(
            "SELECT name, unit, key, le, sum(count) FROM histograms WHERE {wh}
             GROUP BY name, unit, key, le ORDER BY name, key, le"
        );
        let mut st = self.prepare(&sql)?;
        let rows = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn spans(&mut self, q: &TimelineQuery) -> Result<Vec<TimelineSpan>, StoreError> {
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
        let mut st = self.prepare(&sql)?;
        let rows = st
            .query_map(params_from_iter(args), |r| {
                Ok(TimelineSpan {
                    kind: r.get(0)?,
                    pid: r.get::<_, i32>(1)? as u32,
                    tid: r.get::<_, i32>(2)? as u32,
                    comm: r.get(3)?,
                    start_us: r.get(4)?,
                    dur_us: r.get(5)?,
                    stack: r.get::<_, Option<u64>>(6)?.map(|s| s.to_string()),
                    label: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn series(
        &mut self,
        q: &Query,
        step_ms: i64,
        group: Option<&str>,
    ) -> Result<Vec<SeriesRow>, StoreError> {
        let (sql, params) = series_sql(q, Dialect::DuckDb, "samples", step_ms, group);
        self.triples(&sql, &params)
    }

    fn label_values(&mut self, q: &Query, label: &str, limit: usize) -> Result<Totals, StoreError> {
        let (wh, params) = q.where_clause();
        let l = group_expr(label, Dialect::DuckDb);
        let sql = format!(
            "SELECT {l} AS l, sum(value * weight) AS v FROM samples
             WHERE {wh} AND {l} != '' GROUP BY l ORDER BY v DESC, l LIMIT {limit}"
        );
        let mut st = self.prepare(&sql)?;
        let out = st
            .query_map(params_from_iter(to_values(&params)), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }
}

/// The rows of a three-column query.
trait Triples {
    fn triples<A: duckdb::types::FromSql, B: duckdb::types::FromSql, C: duckdb::types::FromSql>(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<(A, B, C)>, StoreError>;
}

impl Triples for Connection {
    fn triples<A: duckdb::types::FromSql, B: duckdb::types::FromSql, C: duckdb::types::FromSql>(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<(A, B, C)>, StoreError> {
        let mut st = self.prepare(sql)?;
        let rows = st
            .query_map(params_from_iter(to_values(params)), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

/// One column of every row of `sql`, collected.
fn column<T: duckdb::types::FromSql, C: FromIterator<T>>(
    conn: &Connection,
    sql: &str,
) -> Result<C, StoreError> {
    let mut st = conn.prepare(sql)?;
    let out = st
        .query_map([], |r| r.get::<_, T>(0))?
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// What the file holds already, so the write path writes each frame, stack and symbol once.
pub(super) fn load_dictionary(conn: &Connection) -> Result<Dictionary, StoreError> {
    let mut st = conn.prepare("SELECT build_id, file_offset FROM symbols")?;
    let symbols = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Dictionary {
        frames: column(conn, "SELECT frame_id FROM frames")?,
        stacks: column(conn, "SELECT stack_id FROM stacks")?,
        symbols,
        symbolized: column(
            conn,
            "SELECT f.frame_id FROM frames f JOIN symbols s
               ON s.build_id = coalesce(f.build_id, 'path:' || f.module) AND s.file_offset = f.address
             WHERE f.kind = 1",
        )?,
        batches: column(conn, "SELECT batch_id FROM batches")?,
    })
}

/// Native user frames with a build ID and no symbol, grouped by build ID.
pub(super) fn unsymbolized(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<Unsymbolized>, StoreError> {
    let mut st = conn.prepare(
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
    let groups: Vec<Unsymbolized> = rows.collect::<Result<_, _>>()?;
    Ok(crate::read::first_offsets(groups, limit))
}

pub(super) fn run_history(conn: &Connection, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT id, host, profiler, state, recorded_ms, json FROM runs ORDER BY id DESC LIMIT {limit}"
    ))?;
    let rows = st
        .query_map([], |r| {
            Ok(RunRecord {
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

pub(super) fn control(conn: &Connection, kind: &str) -> Result<Vec<ControlRecord>, StoreError> {
    let mut st = conn.prepare(
        "SELECT key, json, updated_ms FROM control WHERE kind = ? AND NOT deleted ORDER BY key",
    )?;
    let rows = st
        .query_map([kind], |r| {
            Ok(ControlRecord {
                kind: kind.to_string(),
                key: r.get(0)?,
                json: r.get(1)?,
                updated_ms: r.get(2)?,
                deleted: false,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
