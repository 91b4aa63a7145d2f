//! ClickHouse reads: the shared read path's primitives (with literals inlined, and the symbol
//! lookup done here rather than in a JOIN), the dictionary loaded at open, and the queries only
//! this backend phrases its way. Dictionary tables are read one row per id (`any(…)` grouped by
//! the id), so rows written twice never double count.

use std::collections::{BTreeMap, HashMap, HashSet};

use baton_model::{Frame, FrameKind, ValueType};

use super::http::Http;
use crate::dict::{symbol_key, Dictionary};
use crate::query::{group_expr, inline, quote, Dialect, Query};
use crate::read::{id_list, Backend, BucketRow, StackServiceRow, StoredFrame, Totals};
use crate::series::{level_totals, level_totals_sql, series_sql, LevelKey, SeriesRow};
use crate::{RunRecord, StoreError, TimelineQuery, TimelineSpan, Unsymbolized};

/// A symbol as read back: function, file, line, inlined chain (JSON).
type SymbolRow = (String, Option<String>, Option<u32>, Option<String>);

/// Field `i` of a row.
fn field(r: &[Option<String>], i: usize) -> Option<String> {
    r.get(i).cloned().flatten()
}

/// Field `i` of a row, parsed.
fn parsed<T: std::str::FromStr>(r: &[Option<String>], i: usize) -> Option<T> {
    r.get(i)?.as_deref()?.parse().ok()
}

impl Http {
    /// A SELECT over the samples with the query's WHERE clause, its literals inlined.
    fn samples_sql(&self, q: &Query, select: &str, tail: &str) -> String {
        let (wh, params) = q.where_in(Dialect::ClickHouse);
        inline(
            &format!(
                "SELECT {select} FROM {} WHERE {wh}{tail}",
                self.table("samples")
            ),
            &params,
        )
    }
}

impl Backend for Http {
    const ID_CHUNK: usize = 4096;

    fn stack_totals(&mut self, q: &Query) -> Result<Vec<(u64, f64)>, StoreError> {
        self.pairs(&self.samples_sql(q, "stack_id, sum(value * weight)", " GROUP BY stack_id"))
    }

    fn stack_service_totals(
        &mut self,
        q: &Query,
        label: Option<&str>,
    ) -> Result<Vec<StackServiceRow>, StoreError> {
        let l = label.map_or("''".to_string(), |l| group_expr(l, Dialect::ClickHouse));
        let sql = self.samples_sql(
            q,
            &format!("stack_id, service AS s, {l} AS l, sum(value * weight)"),
            " GROUP BY stack_id, s, l",
        );
        Ok(self
            .rows(&sql)?
            .into_iter()
            .filter_map(|r| {
                let text = |i| field(&r, i).unwrap_or_default();
                Some((parsed(&r, 0)?, text(1), text(2), parsed(&r, 3)?))
            })
            .collect())
    }

    fn level_totals(&mut self, q: &Query, key: LevelKey) -> Result<Totals, StoreError> {
        let table = self.table("samples");
        let [(keys, p1), (windows, p2)] = level_totals_sql(q, Dialect::ClickHouse, &table, key);
        let text = |r: &[Option<String>], i| field(r, i).unwrap_or_default();
        let keys = self
            .rows(&inline(&keys, &p1))?
            .into_iter()
            .filter_map(|r| Some((text(&r, 0), text(&r, 1), parsed(&r, 2)?, parsed(&r, 3)?)))
            .collect();
        let windows = self
            .rows(&inline(&windows, &p2))?
            .into_iter()
            .filter_map(|r| Some((text(&r, 0), parsed(&r, 1)?, parsed(&r, 2)?)))
            .collect();
        Ok(level_totals(keys, windows))
    }

    fn value_type(&mut self, q: &Query) -> Result<Option<ValueType>, StoreError> {
        let sql = self.samples_sql(q, "value_type, unit", " LIMIT 1");
        Ok(self.rows(&sql)?.into_iter().next().and_then(|r| {
            Some(ValueType {
                kind: field(&r, 0)?,
                unit: field(&r, 1)?,
            })
        }))
    }

    fn stacks(&mut self, ids: &[u64]) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = self.rows(&format!(
            "SELECT stack_id, any(frame_ids) FROM {}.stacks WHERE stack_id IN ({}) GROUP BY stack_id",
            self.db(),
            id_list(ids)
        ))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((parsed(&r, 0)?, field(&r, 1)?)))
            .collect())
    }

    fn frames(&mut self, ids: &[u64]) -> Result<Vec<StoredFrame>, StoreError> {
        let db = self.db().to_string();
        let rows = self.rows(&format!(
            "SELECT frame_id, any(kind), any(module), any(build_id), any(address), any(name), any(file), any(line)
             FROM {db}.frames WHERE frame_id IN ({}) GROUP BY frame_id",
            id_list(ids)
        ))?;
        let frames: Vec<(u64, Frame)> = rows
            .into_iter()
            .filter_map(|r| {
                let kind = parsed::<u8>(&r, 1).unwrap_or(1);
                let frame = Frame {
                    kind: FrameKind::from_u8(kind).unwrap_or(FrameKind::User),
                    function: field(&r, 5),
                    module: field(&r, 2).unwrap_or_default(),
                    build_id: field(&r, 3),
                    address: parsed(&r, 4).unwrap_or(0),
                    file: field(&r, 6),
                    line: parsed(&r, 7),
                };
                Some((parsed(&r, 0)?, frame))
            })
            .collect();
        // Symbols of the user frames, by (build ID or path, offset).
        let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
        for (_, f) in frames.iter().filter(|(_, f)| f.kind == FrameKind::User) {
            by_key.entry(symbol_key(f)).or_default().push(f.address);
        }
        let mut syms: HashMap<(String, u64), SymbolRow> = HashMap::new();
        for (k, offs) in by_key {
            for part in offs.chunks(Self::ID_CHUNK) {
                for r in self.rows(&format!(
                    "SELECT file_offset, any(function), any(file), any(line), any(inlined) FROM {db}.symbols
                     WHERE build_id = {} AND file_offset IN ({}) GROUP BY file_offset",
                    quote(&k),
                    id_list(part)
                ))? {
                    if let (Some(off), Some(func)) = (parsed(&r, 0), field(&r, 1)) {
                        let sym = (func, field(&r, 2), parsed(&r, 3), field(&r, 4));
                        syms.insert((k.clone(), off), sym);
                    }
                }
            }
        }
        Ok(frames
            .into_iter()
            .map(|(fid, mut f)| {
                let mut inlined = None;
                if f.kind == FrameKind::User {
                    if let Some((func, file, line, inl)) = syms.get(&(symbol_key(&f), f.address)) {
                        f.function = Some(func.clone());
                        f.file = file.clone();
                        f.line = *line;
                        inlined = inl.clone();
                    }
                }
                (fid, f, inlined)
            })
            .collect())
    }

    fn histogram_buckets(&mut self, q: &Query) -> Result<Vec<BucketRow>, StoreError> {
        let (wh, params) = q.histogram_where_in(Dialect::ClickHouse);
        let sql = inline(
            &format!(
                "SELECT name, unit, key, le, sum(count) FROM {} WHERE {wh} GROUP BY name, unit, key, le ORDER BY name, key, le",
                self.table("histograms")
            ),
            &params,
        );
        Ok(self
            .rows(&sql)?
            .into_iter()
            .filter_map(|r| {
                let text = |i: usize| field(&r, i).unwrap_or_default();
                Some((
                    text(0),
                    text(1),
                    text(2),
                    text(3).parse().ok()?,
                    text(4).parse().ok()?,
                ))
            })
            .collect())
    }

    fn spans(&mut self, q: &TimelineQuery) -> Result<Vec<TimelineSpan>, StoreError> {
        let mut sql = format!(
            "SELECT kind, pid, tid, comm, start_us, dur_us, stack_id, label FROM {}
             WHERE start_us < {} AND start_us + dur_us >= {}",
            self.table("spans"),
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
        Ok(self
            .rows(&sql)?
            .into_iter()
            .map(|r| {
                let num = |i: usize| parsed::<i64>(&r, i).unwrap_or(0);
                TimelineSpan {
                    kind: field(&r, 0).unwrap_or_default(),
                    pid: num(1) as u32,
                    tid: num(2) as u32,
                    comm: field(&r, 3),
                    start_us: num(4),
                    dur_us: num(5),
                    stack: parsed::<u64>(&r, 6).map(|s| s.to_string()),
                    label: field(&r, 7),
                }
            })
            .collect())
    }

    fn series(
        &mut self,
        q: &Query,
        step_ms: i64,
        group: Option<&str>,
    ) -> Result<Vec<SeriesRow>, StoreError> {
        let table = self.table("samples");
        let (sql, params) = series_sql(q, Dialect::ClickHouse, &table, step_ms, group);
        self.keyed(&inline(&sql, &params))
    }

    /// `count()` of the symbols table, from its parts' metadata: it grows when any server adds
    /// symbols (and shrinks when duplicates merge, a harmless extra clear).
    fn symbols_changed(&mut self) -> Result<bool, StoreError> {
        let n = self.number(&format!("SELECT count() FROM {}.symbols", self.db()))?;
        let changed = self.symbol_rows.is_some_and(|before| before != n);
        self.symbol_rows = Some(n);
        Ok(changed)
    }

    fn label_values(&mut self, q: &Query, label: &str, limit: usize) -> Result<Totals, StoreError> {
        let l = group_expr(label, Dialect::ClickHouse);
        let sql = self.samples_sql(
            q,
            &format!("{l} AS l, sum(value * weight) AS v"),
            &format!(" AND {l} != '' GROUP BY l ORDER BY v DESC, l LIMIT {limit}"),
        );
        Ok(self
            .rows(&sql)?
            .into_iter()
            .filter_map(|r| Some((field(&r, 0)?, parsed(&r, 1)?)))
            .collect())
    }
}

impl Http {
    /// The rows of a query of (number, text, number), rows that do not parse left out.
    fn keyed<A: std::str::FromStr, C: std::str::FromStr>(
        &mut self,
        sql: &str,
    ) -> Result<Vec<(A, String, C)>, StoreError> {
        Ok(self
            .rows(sql)?
            .into_iter()
            .filter_map(|r| {
                Some((
                    parsed(&r, 0)?,
                    field(&r, 1).unwrap_or_default(),
                    parsed(&r, 2)?,
                ))
            })
            .collect())
    }
}

/// What the database holds already, and the batches a stopped server left half written:
/// a batch whose only rows say -1 was being written when the last server stopped, so it is
/// suspect, and its retry counts what is there (see `write_many`).
pub(super) fn load_dictionary(http: &Http) -> Result<(Dictionary, HashSet<String>), StoreError> {
    let db = http.db();
    let ids = |sql: &str| -> Result<HashSet<u64>, StoreError> {
        Ok(http
            .rows(sql)?
            .into_iter()
            .filter_map(|r| parsed(&r, 0))
            .collect())
    };
    let mut dict = Dictionary {
        frames: ids(&format!("SELECT DISTINCT frame_id FROM {db}.frames"))?,
        stacks: ids(&format!("SELECT DISTINCT stack_id FROM {db}.stacks"))?,
        ..Dictionary::default()
    };
    for r in http.rows(&format!(
        "SELECT DISTINCT build_id, file_offset FROM {db}.symbols"
    ))? {
        if let (Some(b), Some(o)) = (field(&r, 0), parsed(&r, 1)) {
            dict.symbols.insert((b, o));
        }
    }
    // User frames whose symbol exists, joined here rather than in SQL.
    for r in http.rows(&format!(
        "SELECT frame_id, any(ifNull(build_id, concat('path:', module))), any(address) FROM {db}.frames WHERE kind = 1 GROUP BY frame_id"
    ))? {
        if let (Some(fid), Some(key), Some(addr)) = (parsed(&r, 0), field(&r, 1), parsed(&r, 2)) {
            if dict.symbols.contains(&(key, addr)) {
                dict.symbolized.insert(fid);
            }
        }
    }
    let mut suspect = HashSet::new();
    for r in http.rows(&format!(
        "SELECT batch_id, max(sample_rows) FROM {db}.batches GROUP BY batch_id"
    ))? {
        let (Some(id), Some(rows)) = (field(&r, 0), field(&r, 1)) else {
            continue;
        };
        if rows.parse::<i64>().is_ok_and(|n| n >= 0) {
            dict.batches.insert(id);
        } else {
            suspect.insert(id);
        }
    }
    Ok((dict, suspect))
}

pub(super) fn run_history(http: &Http, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
    let rows = http.rows(&format!(
        "SELECT id, argMax(host, recorded_ms), argMax(profiler, recorded_ms), argMax(state, recorded_ms),
                max(recorded_ms), argMax(json, recorded_ms)
         FROM {}.runs GROUP BY id ORDER BY id DESC LIMIT {limit}",
        http.db()
    ))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(RunRecord {
                id: parsed(&r, 0)?,
                host: field(&r, 1)?,
                profiler: field(&r, 2)?,
                state: field(&r, 3)?,
                recorded_ms: parsed(&r, 4)?,
                json: field(&r, 5)?,
            })
        })
        .collect())
}

/// Native user frames with a build ID and no symbol, grouped by build ID. The symbols of their
/// build IDs are read from the store (another server may have added them) and join `known`.
pub(super) fn unsymbolized(
    http: &Http,
    known: &mut HashSet<(String, u64)>,
    limit: usize,
) -> Result<Vec<Unsymbolized>, StoreError> {
    let mut frames: Vec<(String, String, u64)> = Vec::new();
    for r in http.rows(&format!(
        "SELECT DISTINCT build_id, module, address FROM {}.frames WHERE kind = 1 AND isNotNull(build_id) ORDER BY build_id, address",
        http.db()
    ))? {
        if let (Some(b), Some(m), Some(a)) = (field(&r, 0), field(&r, 1), parsed::<u64>(&r, 2)) {
            if !known.contains(&(b.clone(), a)) {
                frames.push((b, m, a));
            }
        }
    }
    let mut builds: Vec<String> = frames.iter().map(|f| quote(&f.0)).collect();
    builds.dedup();
    for part in builds.chunks(Http::ID_CHUNK) {
        for r in http.rows(&format!(
            "SELECT DISTINCT build_id, file_offset FROM {}.symbols WHERE build_id IN ({})",
            http.db(),
            part.join(",")
        ))? {
            if let (Some(b), Some(o)) = (field(&r, 0), parsed(&r, 1)) {
                known.insert((b, o));
            }
        }
    }
    let mut by_build: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for (b, m, a) in frames {
        if known.contains(&(b.clone(), a)) {
            continue;
        }
        let e = by_build.entry(b).or_insert_with(|| (m, Vec::new()));
        if !e.1.contains(&a) {
            e.1.push(a);
        }
    }
    let groups = by_build
        .into_iter()
        .map(|(build_id, (module, mut offsets))| {
            offsets.sort_unstable();
            Unsymbolized {
                build_id,
                module,
                offsets,
            }
        });
    Ok(crate::read::first_offsets(groups, limit))
}
