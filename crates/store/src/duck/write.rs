//! DuckDB writes: a batch (and its id) in one transaction through appenders, and late symbols.

use baton_model::Batch;
use duckdb::params;

use super::DuckDbStore;
use crate::dict::{detail, frame_columns, span_source, LabelColumns, NewEntries};
use crate::{LateSymbol, StoreError};

impl DuckDbStore {
    /// Writes a batch, and its id when it has one, in one transaction.
    pub(super) fn write_in(
        &mut self,
        batch: &Batch,
        id: Option<(&str, Option<&str>)>,
    ) -> Result<(), StoreError> {
        let mut new = NewEntries::default();
        let sids: Vec<u64> = batch
            .samples
            .iter()
            .map(|s| self.dict.intern(&s.stack, &mut new))
            .collect();
        let tx = self.conn.transaction()?;
        {
            let mut app = tx.appender("frames")?;
            for (fid, f) in &new.frames {
                let (name, file, line) = frame_columns(f);
                app.append_row(params![
                    fid,
                    f.kind.as_u8(),
                    f.module,
                    f.build_id,
                    f.address,
                    name,
                    file,
                    line.map(|l| l as i32)
                ])?;
            }
            let mut app = tx.appender("symbols")?;
            for ((key, off), f) in &new.symbols {
                app.append_row(params![
                    key,
                    off,
                    f.function,
                    f.file,
                    f.line.map(|l| l as i32),
                    None::<String>
                ])?;
            }
            let mut app = tx.appender("stacks")?;
            for (sid, fids) in &new.stacks {
                app.append_row(params![sid, crate::read::id_list(fids)])?;
            }
            let mut app = tx.appender("samples")?;
            for (sid, s) in sids.iter().zip(&batch.samples) {
                let c = LabelColumns::of(Some(&s.labels));
                let vt = batch.value_type_of(s);
                app.append_row(params![
                    batch.ts_ms,
                    batch.profiler,
                    vt.kind,
                    vt.unit,
                    c.host,
                    c.pid,
                    c.tid,
                    c.comm,
                    c.exe,
                    c.cgroup,
                    sid,
                    s.value,
                    s.weight,
                    c.run,
                    c.service,
                    s.value_index,
                    detail(&s.labels)
                ])?;
            }
            let mut app = tx.appender("spans")?;
            for sp in &batch.spans {
                let (own, c) = span_source(batch, sp);
                app.append_row(params![
                    sp.start_us,
                    sp.dur_us,
                    sp.kind.name(),
                    batch.profiler,
                    c.host,
                    sp.pid as i32,
                    sp.tid as i32,
                    own.and(c.comm),
                    own.map(|i| sids[i]),
                    (!sp.label.is_empty()).then_some(sp.label.as_str()),
                    c.run
                ])?;
            }
            let mut app = tx.appender("histograms")?;
            for h in &batch.histograms {
                let c = LabelColumns::of(Some(&h.labels));
                for b in &h.buckets {
                    app.append_row(params![
                        batch.ts_ms,
                        batch.profiler,
                        h.name,
                        h.unit,
                        h.key,
                        c.host,
                        c.pid,
                        c.comm,
                        c.exe,
                        c.run,
                        c.service,
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
        self.dict.commit(new);
        Ok(())
    }

    /// Stores symbols found later for `build_id`; returns how many were new.
    pub(super) fn write_symbols(
        &mut self,
        build_id: &str,
        symbols: &[LateSymbol],
    ) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut added = 0;
        {
            let mut app = tx.appender("symbols")?;
            for s in symbols {
                if self.dict.symbols.insert((build_id.to_string(), s.offset)) {
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
            self.cache.clear();
            let mut st = self.conn.prepare(
                "SELECT f.frame_id FROM frames f JOIN symbols s
                   ON s.build_id = f.build_id AND s.file_offset = f.address
                 WHERE f.kind = 1 AND f.build_id = ?",
            )?;
            let ids: Vec<u64> = st
                .query_map([build_id], |r| r.get::<_, u64>(0))?
                .collect::<Result<_, _>>()?;
            self.dict.symbolized.extend(ids);
        }
        Ok(added)
    }
}
