//! ClickHouse writes: batches grouped into one INSERT per table, with the batch ids that make a
//! retried batch count once, and late symbols and run records.

use std::collections::{HashMap, HashSet};

use baton_model::Batch;

use super::http::ch_err;
use super::tsv::{opt, or_empty, s};
use super::{ClickHouseStore, IN_FLIGHT_GRACE_MS};
use crate::dict::{detail, frame_columns, span_source, LabelColumns, NewEntries};
use crate::query::quote;
use crate::{LateSymbol, RunRecord, StoreError, WriteItem};

/// A batch to write, with its id and sending host when it has an id.
type Pending<'a> = (&'a Batch, Option<(&'a str, Option<&'a str>)>);

/// The TSV rows of one table's insert.
#[derive(Default)]
struct Rows {
    text: String,
    count: usize,
}

impl Rows {
    fn push(&mut self, fields: &[Option<String>]) {
        super::tsv::push_row(&mut self.text, fields);
        self.count += 1;
    }

    /// A row of samples or histograms, in the order of [`SAMPLE_COLUMNS`] and
    /// [`HISTOGRAM_COLUMNS`]: the batch's time, profiler and id, the label columns both tables
    /// have, then the table's own `fields`.
    fn push_labelled(
        &mut self,
        batch: &Batch,
        bid: &str,
        c: &LabelColumns,
        fields: &[Option<String>],
    ) {
        let mut row = Vec::with_capacity(fields.len() + 9);
        row.extend([s(batch.ts_ms), s(&batch.profiler), s(bid)]);
        // Sort-key columns have no NULL in ClickHouse: a missing one is ''.
        row.extend([or_empty(c.host), or_empty(c.service), or_empty(c.comm)]);
        row.extend([opt(c.pid), opt(c.exe), opt(c.run)]);
        row.extend_from_slice(fields);
        self.push(&row);
    }
}

/// The columns of a sample row, as [`Rows::push_labelled`] writes them.
const SAMPLE_COLUMNS: &str = "ts_ms, profiler, batch, host, service, comm, pid, exe, run, \
    value_type, unit, tid, cgroup, stack_id, value, weight, value_index, detail";

/// The columns of a histogram bucket's row, as [`Rows::push_labelled`] writes them.
const HISTOGRAM_COLUMNS: &str =
    "ts_ms, profiler, batch, host, service, comm, pid, exe, run, name, unit, key, le, count";

/// What the `batches` table says of a batch id this store did not write.
enum Seen {
    Stored,
    /// Only intent rows: another server is writing it, or died writing it.
    Intent {
        received_ms: i64,
    },
}

/// Which of a suspect batch's tables hold all its rows already.
#[derive(Default, Clone, Copy)]
struct Stored {
    samples: bool,
    histograms: bool,
    spans: bool,
}

impl ClickHouseStore {
    /// A batch without an id (`Store::write_batch`).
    pub(super) fn write_in(
        &mut self,
        batch: &Batch,
        id: Option<(&str, Option<&str>)>,
    ) -> Result<(), StoreError> {
        self.write_many(&[(batch, id)])
    }

    /// One INSERT per table for the whole group; a batch stored already, or twice in the group,
    /// is a duplicate. Ids this store has not written are looked up in the `batches` table
    /// first: another server sharing the database may have stored them (a duplicate), or be
    /// writing them now ([`StoreError::InFlight`]), or have died writing them (suspect: the retry
    /// counts what it left). Between that look-up and the intent row that `write_many` inserts,
    /// two servers given the same batch at once can both write it: a row is not a lock.
    pub(super) fn write_group(&mut self, items: &[WriteItem<'_>]) -> Vec<Result<bool, StoreError>> {
        let unknown: Vec<&str> = items
            .iter()
            .filter_map(|it| it.batch_id)
            .filter(|id| !self.dict.batches.contains(*id))
            .collect();
        let seen = match self.seen(&unknown) {
            Ok(seen) => seen,
            Err(e) => {
                // The write failed before its first INSERT: counted as the insert it stopped.
                self.http.stats.insert_errors += 1;
                return items.iter().map(|_| Err(ch_err(e.to_string()))).collect();
            }
        };
        let now = baton_model::time::now_ms();
        let mut out: Vec<Option<Result<bool, StoreError>>> = Vec::with_capacity(items.len());
        let mut group: Vec<Pending<'_>> = Vec::new();
        let mut in_group = Vec::new();
        let mut ids: HashSet<&str> = HashSet::new();
        for (i, it) in items.iter().enumerate() {
            let answer = match it.batch_id {
                Some(id) if self.dict.batches.contains(id) || !ids.insert(id) => Some(Ok(false)),
                Some(id) => match seen.get(id) {
                    Some(Seen::Stored) => {
                        self.suspect.remove(id);
                        self.dict.batches.insert(id.to_string());
                        Some(Ok(false))
                    }
                    Some(&Seen::Intent { received_ms })
                        if !self.suspect.contains(id) && now - received_ms < IN_FLIGHT_GRACE_MS =>
                    {
                        Some(Err(StoreError::InFlight {
                            batch_id: id.to_string(),
                        }))
                    }
                    Some(Seen::Intent { .. }) => {
                        self.suspect.insert(id.to_string());
                        None
                    }
                    None => None,
                },
                None => None,
            };
            if answer.is_none() {
                group.push((it.batch, it.batch_id.map(|b| (b, it.host))));
                in_group.push(i);
            }
            out.push(answer);
        }
        let r = self.write_many(&group);
        for (k, &i) in in_group.iter().enumerate() {
            out[i] = Some(match &r {
                Ok(()) => {
                    if let Some((id, _)) = group[k].1 {
                        self.dict.batches.insert(id.to_string());
                    }
                    Ok(true)
                }
                Err(e) => Err(ch_err(e.to_string())),
            });
        }
        out.into_iter().map(|o| o.unwrap_or(Ok(false))).collect()
    }

    /// What the `batches` table holds of `ids`: stored (a row with its sample count), or only
    /// intent rows (of -1), with the latest one's time.
    fn seen(&self, ids: &[&str]) -> Result<HashMap<String, Seen>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let list: Vec<String> = ids.iter().map(|id| quote(id)).collect();
        let rows = self.http.rows(&format!(
            "SELECT batch_id, max(sample_rows), max(received_ms) FROM {}.batches
             WHERE batch_id IN ({}) GROUP BY batch_id",
            self.http.db(),
            list.join(",")
        ))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let num = |i: usize| r.get(i)?.as_deref()?.parse::<i64>().ok();
                let seen = if num(1)? >= 0 {
                    Seen::Stored
                } else {
                    Seen::Intent {
                        received_ms: num(2)?,
                    }
                };
                Some((r.first()?.clone()?, seen))
            })
            .collect())
    }

    /// Writes batches together: one INSERT per table for all of them (the ingest writer groups
    /// concurrent batches by size and time). Dictionaries first, then samples, histograms, and
    /// the batch ids last. No transaction spans tables in ClickHouse: a batch whose samples may
    /// have been stored before an error is marked suspect, and its rows are counted (by its
    /// `batch` column) before a retry writes them again.
    fn write_many(&mut self, items: &[Pending<'_>]) -> Result<(), StoreError> {
        let mut new = NewEntries::default();
        let mut samples = Rows::default();
        let mut hists = Rows::default();
        let mut spans = Rows::default();
        for &(batch, id) in items {
            let bid = id.map(|i| i.0).unwrap_or("");
            let stored = match id {
                Some((bid, _)) if self.suspect.contains(bid) => self.stored(batch, bid)?,
                _ => Stored::default(),
            };
            // Each sample's stack id, for the spans that name their sample.
            let mut sids: Vec<u64> = Vec::with_capacity(batch.samples.len());
            for smp in &batch.samples {
                let sid = self.dict.intern(&smp.stack, &mut new);
                sids.push(sid);
                if stored.samples {
                    continue;
                }
                let c = LabelColumns::of(Some(&smp.labels));
                let vt = batch.value_type_of(smp);
                let fields = [
                    s(&vt.kind),
                    s(&vt.unit),
                    opt(c.tid),
                    opt(c.cgroup),
                    s(sid),
                    s(smp.value),
                    s(smp.weight),
                    s(smp.value_index),
                    detail(&smp.labels),
                ];
                samples.push_labelled(batch, bid, &c, &fields);
            }
            for h in batch.histograms.iter().filter(|_| !stored.histograms) {
                let c = LabelColumns::of(Some(&h.labels));
                for b in &h.buckets {
                    let fields = [s(&h.name), s(&h.unit), s(&h.key), s(b.le), s(b.count)];
                    hists.push_labelled(batch, bid, &c, &fields);
                }
            }
            for sp in batch.spans.iter().filter(|_| !stored.spans) {
                let (own, c) = span_source(batch, sp);
                spans.push(&[
                    s(sp.start_us),
                    s(sp.dur_us),
                    s(sp.kind.name()),
                    s(&batch.profiler),
                    or_empty(c.host),
                    s(sp.pid as i32),
                    s(sp.tid as i32),
                    opt(own.and(c.comm)),
                    opt(own.map(|i| sids[i])),
                    (!sp.label.is_empty()).then(|| sp.label.clone()),
                    opt(c.run),
                    s(bid),
                ]);
            }
        }
        let mut frames = Rows::default();
        for (fid, f) in &new.frames {
            let (name, file, line) = frame_columns(f);
            frames.push(&[
                s(fid),
                s(f.kind.as_u8()),
                s(&f.module),
                f.build_id.clone(),
                s(f.address),
                opt(name),
                opt(file),
                opt(line),
            ]);
        }
        let mut symbols = Rows::default();
        for ((key, off), f) in &new.symbols {
            symbols.push(&[
                s(key),
                s(off),
                f.function.clone(),
                f.file.clone(),
                opt(f.line),
                None,
            ]);
        }
        let mut stacks = Rows::default();
        for (sid, fids) in &new.stacks {
            stacks.push(&[s(sid), Some(crate::read::id_list(fids))]);
        }
        self.insert("frames", &frames)?;
        self.insert("symbols", &symbols)?;
        self.insert("stacks", &stacks)?;
        let ids: Vec<&str> = items.iter().filter_map(|(_, id)| id.map(|i| i.0)).collect();
        // From the samples' insert on, an error may leave rows stored (a timeout after the
        // commit, or a later table's insert failing): retries must count them first. The
        // batches are marked suspect here, and in the store too (a `batches` row of -1 sample
        // rows, replaced by the final one), so a server restarted in between knows it, and
        // another server sharing the store sees the write under way (a suspect batch's retry
        // marks it again, as under way now).
        let mut intent = Rows::default();
        for &(_, id) in items {
            if let Some((bid, host)) = id {
                intent.push(&[
                    s(bid),
                    or_empty(host),
                    s(baton_model::time::now_ms()),
                    s(-1),
                ]);
            }
        }
        self.insert("batches", &intent)?;
        for bid in &ids {
            self.suspect.insert(bid.to_string());
        }
        let st = format!("{} ({SAMPLE_COLUMNS})", self.http.sharded("samples"));
        let ht = format!("{} ({HISTOGRAM_COLUMNS})", self.http.sharded("histograms"));
        let spt = self.http.sharded("spans");
        self.insert(&st, &samples)?;
        self.insert(&ht, &hists)?;
        self.insert(&spt, &spans)?;
        let mut done = Rows::default();
        for &(batch, id) in items {
            if let Some((bid, host)) = id {
                let now = baton_model::time::now_ms();
                done.push(&[s(bid), or_empty(host), s(now), s(batch.samples.len())]);
            }
        }
        self.insert("batches", &done)?;
        for bid in &ids {
            self.suspect.remove(*bid);
        }
        self.dict.commit(new);
        Ok(())
    }

    fn insert(&mut self, table: &str, rows: &Rows) -> Result<(), StoreError> {
        self.http.insert(table, &rows.text, rows.count)
    }

    /// A suspect batch may have some of its tables stored already: each table's rows are
    /// counted, and a table that has them all is not written again.
    fn stored(&self, batch: &Batch, bid: &str) -> Result<Stored, StoreError> {
        let b = quote(bid);
        let key = format!(
            "profiler = {} AND ts_ms = {} AND batch = {b}",
            quote(&batch.profiler),
            batch.ts_ms
        );
        let hist_rows: usize = batch.histograms.iter().map(|h| h.buckets.len()).sum();
        let starts = batch.spans.iter().map(|s| s.start_us);
        let spt = self.http.table("spans");
        let spans = match (starts.clone().min(), starts.max()) {
            (Some(a), Some(z)) => self.stored_part(
                &format!(
                    "SELECT count() FROM {spt} WHERE start_us BETWEEN {a} AND {z} AND batch = {b}"
                ),
                batch.spans.len(),
                "spans",
                bid,
            )?,
            _ => false,
        };
        let samples = self.stored_part(
            &format!(
                "SELECT count() FROM {} WHERE {key}",
                self.http.table("samples")
            ),
            batch.samples.len(),
            "samples",
            bid,
        )?;
        let histograms = hist_rows > 0
            && self.stored_part(
                &format!(
                    "SELECT count() FROM {} WHERE {key}",
                    self.http.table("histograms")
                ),
                hist_rows,
                "histogram buckets",
                bid,
            )?;
        Ok(Stored {
            samples,
            histograms,
            spans,
        })
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
        let n = self.http.number(count_sql)?.max(0) as usize;
        if n != 0 && n != expected {
            return Err(ch_err(format!(
                "batch {bid} has {n} of its {expected} {what} stored already"
            )));
        }
        Ok(n != 0)
    }

    pub(super) fn write_runs(&mut self, runs: &[RunRecord]) -> Result<(), StoreError> {
        let mut tsv = Rows::default();
        for r in runs {
            tsv.push(&[
                s(r.id),
                s(&r.host),
                s(&r.profiler),
                s(&r.state),
                s(r.recorded_ms),
                s(&r.json),
            ]);
        }
        self.insert("runs", &tsv)
    }

    pub(super) fn write_symbols(
        &mut self,
        build_id: &str,
        symbols: &[LateSymbol],
    ) -> Result<usize, StoreError> {
        let mut tsv = Rows::default();
        let mut new = Vec::new();
        for sym in symbols {
            let key = (build_id.to_string(), sym.offset);
            if self.dict.symbols.contains(&key) || new.contains(&key) {
                continue;
            }
            let inlined = (!sym.inlined.is_empty())
                .then(|| serde_json::to_string(&sym.inlined).unwrap_or_default());
            tsv.push(&[
                s(build_id),
                s(sym.offset),
                s(&sym.function),
                sym.file.clone(),
                opt(sym.line),
                inlined,
            ]);
            new.push(key);
        }
        let added = new.len();
        self.insert("symbols", &tsv)?;
        self.dict.symbols.extend(new);
        if added > 0 {
            self.cache.clear();
        }
        Ok(added)
    }
}
