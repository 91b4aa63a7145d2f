//! The read path both backends share. Every view starts from one aggregation (weighted totals
//! per stack id); the stacks and frames those ids name are read once and cached, since both are
//! immutable once written. A backend answers only the few primitives of [`Backend`]; profiles,
//! named stacks, timeline stacks and merged histograms are built here, once.

use std::collections::{BTreeMap, HashMap};

use baton_model::{
    Frame, FrameKind, Histogram, Labels, NamedStacks, Profile, StackSample, ValueType,
};

use crate::dict::{BuildIdHash, IdMap};
use crate::series::LevelKey;
use crate::{Query, StoreError, Timeline, TimelineQuery, TimelineSpan, Unsymbolized};

/// A frame as a backend reads it back: its id, the frame with its symbol applied, and the
/// functions inlined at its address from a late symbol (JSON `[[name, file, line], …]`,
/// innermost first), when it has them.
pub(crate) type StoredFrame = (u64, Frame, Option<String>);

/// A stack's total in one service and under one value of a label: (stack id, service, value,
/// total).
pub(crate) type StackServiceRow = (u64, String, String, f64);

/// One summed histogram bucket: (name, unit, key, le, count).
pub(crate) type BucketRow = (String, String, String, u64, f64);

/// What a backend reads for the shared path. Ids come in chunks of at most [`Backend::ID_CHUNK`].
pub(crate) trait Backend {
    /// Most ids in one `IN (…)` list.
    const ID_CHUNK: usize;
    /// Weighted totals per stack id for a query: the one aggregation every view starts from.
    fn stack_totals(&mut self, q: &Query) -> Result<Vec<(u64, f64)>, StoreError>;
    /// Weighted totals per (stack id, service, '' for none), for Stack Schema rules that
    /// belong to services; with a label (checked by [`crate::query::group_label`]), per
    /// (stack, service, value of the label) (the value '' without one).
    fn stack_service_totals(
        &mut self,
        q: &Query,
        label: Option<&str>,
    ) -> Result<Vec<StackServiceRow>, StoreError>;
    /// Totals of a level (`live_bytes`) per stack or label value, from the rows of
    /// [`crate::series::level_totals_sql`] through [`crate::series::level_totals`].
    fn level_totals(&mut self, q: &Query, key: LevelKey) -> Result<Totals, StoreError>;
    /// The value type of the query's samples (one profiler has one value type).
    fn value_type(&mut self, q: &Query) -> Result<Option<ValueType>, StoreError>;
    /// The stored stacks among `ids`, each with its comma-separated frame ids, leaf first.
    fn stacks(&mut self, ids: &[u64]) -> Result<Vec<(u64, String)>, StoreError>;
    /// The stored frames among `ids`, with their symbols.
    fn frames(&mut self, ids: &[u64]) -> Result<Vec<StoredFrame>, StoreError>;
    /// The query's histogram buckets summed per (name, unit, key, le), in (name, key, le)
    /// order.
    fn histogram_buckets(&mut self, q: &Query) -> Result<Vec<BucketRow>, StoreError>;
    /// Spans that overlap the query's window, in start order, at most `limit + 1`.
    fn spans(&mut self, q: &TimelineQuery) -> Result<Vec<TimelineSpan>, StoreError>;
    /// Rows of [`crate::series::series_sql`]: (bucket, group key, value) per time bucket of
    /// `step_ms`, per value of the label column `group` if given.
    fn series(
        &mut self,
        q: &Query,
        step_ms: i64,
        group: Option<&str>,
    ) -> Result<Vec<crate::series::SeriesRow>, StoreError>;
    /// Distinct values of a label column in the range, most weighted first.
    /// Weighted totals per value of `label` (checked by [`crate::query::group_label`]), most
    /// first; rows without the label are left out.
    fn label_values(&mut self, q: &Query, label: &str, limit: usize) -> Result<Totals, StoreError>;
    /// Whether symbols may have been added since the last call by a writer other than this
    /// store (another server on a shared store): the cached frames may lack them.
    fn symbols_changed(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// The [`crate::Store`] methods every backend answers alike, written once: the read path over
/// the store's [`Backend`] (`self.$backend`) and [`Cache`] (`self.cache`), and a batch without
/// an id through its `write_in(batch, None)`.
macro_rules! shared_store_methods {
    ($backend:ident) => {
        fn write_batch(&mut self, batch: &baton_model::Batch) -> Result<(), $crate::StoreError> {
            self.write_in(batch, None)
        }

        fn profile(
            &mut self,
            q: &$crate::Query,
        ) -> Result<baton_model::Profile, $crate::StoreError> {
            self.cache.profile(&mut self.$backend, q)
        }

        fn named_stacks(
            &mut self,
            q: &$crate::Query,
        ) -> Result<baton_model::NamedStacks, $crate::StoreError> {
            self.cache.named_stacks(&mut self.$backend, q)
        }

        fn timeline(
            &mut self,
            q: &$crate::TimelineQuery,
        ) -> Result<$crate::Timeline, $crate::StoreError> {
            self.cache.timeline(&mut self.$backend, q)
        }

        fn schema_matches(
            &mut self,
            q: &$crate::Query,
            schema: &baton_model::StackSchema,
        ) -> Result<(f64, Vec<baton_model::schema::RuleMatch>), $crate::StoreError> {
            self.cache.schema_matches(&mut self.$backend, q, schema)
        }

        fn histograms(
            &mut self,
            q: &$crate::Query,
        ) -> Result<Vec<baton_model::Histogram>, $crate::StoreError> {
            q.no_tag_filter("histograms")?;
            $crate::read::histograms(&mut self.$backend, q)
        }

        fn timeseries(
            &mut self,
            q: &$crate::Query,
            step_ms: i64,
        ) -> Result<Vec<$crate::Point>, $crate::StoreError> {
            let series = $crate::series::series(&mut self.$backend, q, step_ms, None)?;
            Ok(series
                .into_iter()
                .next()
                .map(|s| s.points)
                .unwrap_or_default())
        }

        fn series(
            &mut self,
            q: &$crate::Query,
            step_ms: i64,
            group_by: Option<&str>,
        ) -> Result<Vec<$crate::Series>, $crate::StoreError> {
            $crate::series::series(&mut self.$backend, q, step_ms, group_by)
        }

        fn label_values(
            &mut self,
            q: &$crate::Query,
            label: &str,
            limit: usize,
        ) -> Result<Vec<(String, f64)>, $crate::StoreError> {
            if q.is_tag(label) {
                return self.cache.tag_totals(&mut self.$backend, q, label, limit);
            }
            let label = $crate::query::group_label(label)?;
            if q.has_tag_filter() {
                return self
                    .cache
                    .filtered_label_totals(&mut self.$backend, q, label, limit);
            }
            $crate::read::label_totals(&mut self.$backend, q, label, limit)
        }
    };
}
pub(crate) use shared_store_methods;

/// Label values and their weighted totals, most weighted first.
pub(crate) type Totals = Vec<(String, f64)>;

/// `1,2,3`: ids for an `IN (…)` list.
pub(crate) fn id_list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Weighted totals per stack: summed over the range, or for a level the mean over windows.
fn totals<B: Backend>(b: &mut B, q: &Query) -> Result<Vec<(u64, f64)>, StoreError> {
    if q.value.as_deref().is_some_and(crate::is_level) {
        Ok(b.level_totals(q, LevelKey::Stack)?
            .into_iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
            .collect())
    } else {
        b.stack_totals(q)
    }
}

/// A label's values in the range, most weighted first: summed, or for a level the mean over
/// windows (see [`crate::series::level_totals`]).
pub(crate) fn label_totals<B: Backend>(
    b: &mut B,
    q: &Query,
    label: &str,
    limit: usize,
) -> Result<Totals, StoreError> {
    if !q.value.as_deref().is_some_and(crate::is_level) {
        return b.label_values(q, label, limit);
    }
    let mut out = b.level_totals(q, LevelKey::Label(label))?;
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.truncate(limit);
    Ok(out)
}

/// A stack's total with the query's Stack Schema applied: its tags, and the frames it keeps
/// (indexes into its frames, inlined ones first, leaf first; `None`: all).
struct SchemaRow {
    sid: u64,
    /// The rows' service, when the rules have some of a service's ('' otherwise).
    service: String,
    value: f64,
    tags: Tags,
    keep: Option<Vec<usize>>,
}

/// A stack's Stack Schema tags, (key, value) in key order.
type Tags = Vec<(String, String)>;

/// What the Stack Schema made of a stack: its tags and the frames it keeps (`None`: all).
type Applied = (Tags, Option<Vec<usize>>);

/// A label filter on a Stack Schema tag, with a stored label's semantics.
struct TagFilter<'a> {
    filter: &'a crate::Filter,
    regex: Option<regex::Regex>,
}

impl<'a> TagFilter<'a> {
    fn new(filter: &'a crate::Filter) -> Result<TagFilter<'a>, StoreError> {
        let regex = match filter.op {
            crate::FilterOp::Regex => Some(
                regex::Regex::new(&format!("^(?:{})$", filter.value)).map_err(|e| {
                    StoreError::BadFilter(format!("{}~{}: {e}", filter.label, filter.value))
                })?,
            ),
            _ => None,
        };
        Ok(TagFilter { filter, regex })
    }

    fn keeps(&self, tags: &[(String, String)]) -> bool {
        let f = self.filter;
        // As for a stored label: `=`, `~` and a set need the tag; `!=` and "none of" pass a
        // stack without it.
        let v = tags
            .iter()
            .find(|(k, _)| *k == f.label)
            .map(|(_, v)| v.as_str());
        match (f.op, v) {
            (crate::FilterOp::Eq, v) => v == Some(f.value.as_str()),
            (crate::FilterOp::NotEq, v) => v != Some(f.value.as_str()),
            (crate::FilterOp::Regex, Some(v)) => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            (crate::FilterOp::Regex, None) => false,
            (crate::FilterOp::AnyOf, v) => v.is_some_and(|v| f.values.iter().any(|x| x == v)),
            (crate::FilterOp::NoneOf, v) => !v.is_some_and(|v| f.values.iter().any(|x| x == v)),
        }
    }
}

/// Stacks and frames read back for queries.
#[derive(Default)]
pub(crate) struct Cache {
    frames: IdMap<Frame>,
    /// Display name of each cached frame, computed once.
    names: IdMap<String>,
    /// Frames inlined at a user frame's address, leaf first, from a late symbol.
    inlined: IdMap<Vec<Frame>>,
    stacks: IdMap<Vec<u64>>,
    /// What the Stack Schema `applied_for` made of each (stack, service): stacks never
    /// change, so neither does this until the rules do.
    applied: HashMap<(u64, String), Applied>,
    applied_for: Option<std::sync::Arc<baton_model::StackSchema>>,
}

impl Cache {
    /// Forgets everything: frames read before symbols were added were read without them (and
    /// cached stacks are taken to have their frames cached, so they go too).
    pub(crate) fn clear(&mut self) {
        self.frames.clear();
        self.names.clear();
        self.inlined.clear();
        self.stacks.clear();
        self.applied.clear();
    }

    /// Clears the cache when another writer may have added symbols.
    fn refresh<B: Backend>(&mut self, b: &mut B) -> Result<(), StoreError> {
        if b.symbols_changed()? {
            self.clear();
        }
        Ok(())
    }

    /// Weighted samples of the query, aggregated per stack, with frames resolved.
    pub(crate) fn profile<B: Backend>(
        &mut self,
        b: &mut B,
        q: &Query,
    ) -> Result<Profile, StoreError> {
        self.refresh(b)?;
        let rows = self.schema_rows(b, q)?;
        let value_type = b.value_type(q)?.unwrap_or_else(ValueType::cpu_nanoseconds);
        let mut p = Profile::new(value_type);
        p.start_unix_ns = q.from_ms.saturating_mul(1_000_000);
        p.duration_ns = (q.to_ms - q.from_ms).saturating_mul(1_000_000);
        for row in rows {
            let mut stack: Vec<Frame> = self
                .stacks
                .get(&row.sid)
                .map(|fids| {
                    fids.iter()
                        .flat_map(|f| {
                            let inlined = self.inlined.get(f).into_iter().flatten();
                            inlined.chain(self.frames.get(f)).cloned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let Some(keep) = &row.keep {
                stack = keep.iter().filter_map(|&i| stack.get(i).cloned()).collect();
            }
            // Weighted sums are already applied; carry them as value with weight 1.
            p.samples.push(StackSample {
                stack,
                labels: row.tags.into_iter().collect(),
                value: row.value.round() as i64,
                weight: 1.0,
                value_index: 0,
            });
        }
        Ok(p)
    }

    /// The same stacks as [`Cache::profile`], as interned names.
    pub(crate) fn named_stacks<B: Backend>(
        &mut self,
        b: &mut B,
        q: &Query,
    ) -> Result<NamedStacks, StoreError> {
        self.refresh(b)?;
        if q.schema.as_ref().is_none_or(|s| s.is_empty()) {
            let rows = totals(b, q)?;
            let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
            self.fill(b, &ids)?;
            let value_type = b.value_type(q)?;
            return Ok(self.name_stacks(&rows, value_type));
        }
        let rows = self.schema_rows(b, q)?;
        let value_type = b.value_type(q)?;
        let plain: Vec<(u64, f64)> = rows.iter().map(|r| (r.sid, r.value)).collect();
        let mut named = self.name_stacks(&plain, value_type);
        // Rows whose stack was found are named in order; drop and collapse their frames.
        let mut found = rows.iter().filter(|r| self.stacks.contains_key(&r.sid));
        for (idx, _) in named.stacks.iter_mut() {
            if let Some(keep) = found.next().and_then(|r| r.keep.as_ref()) {
                *idx = keep.iter().filter_map(|&i| idx.get(i).copied()).collect();
            }
        }
        Ok(named)
    }

    /// Totals per value of a Stack Schema tag, most first (stacks without it left out).
    pub(crate) fn tag_totals<B: Backend>(
        &mut self,
        b: &mut B,
        q: &Query,
        key: &str,
        limit: usize,
    ) -> Result<Totals, StoreError> {
        self.refresh(b)?;
        let mut by: HashMap<String, f64> = HashMap::new();
        for row in self.schema_rows(b, q)? {
            if let Some((_, v)) = row.tags.iter().find(|(k, _)| k == key) {
                *by.entry(v.clone()).or_default() += row.value;
            }
        }
        let mut out: Totals = by.into_iter().collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(limit);
        Ok(out)
    }

    /// Totals per value of a stored label over the stacks that pass the query's filters on
    /// Stack Schema tags: per (stack, service, value) from the store, filtered here.
    pub(crate) fn filtered_label_totals<B: Backend>(
        &mut self,
        b: &mut B,
        q: &Query,
        label: &str,
        limit: usize,
    ) -> Result<Totals, StoreError> {
        self.refresh(b)?;
        if q.value.as_deref().is_some_and(crate::is_level) {
            return Err(StoreError::TagFilter {
                tag: q
                    .filters
                    .iter()
                    .find(|f| q.is_tag(&f.label))
                    .map(|f| f.label.clone())
                    .unwrap_or_default(),
                what: "a level's label totals",
            });
        }
        let rows = b.stack_service_totals(q, Some(label))?;
        // The stacks' tags, through the same path (and cache) as every other answer.
        let mut per_stack: HashMap<(u64, String), f64> = HashMap::new();
        let service_rules = q.schema.as_ref().is_some_and(|s| s.has_service_rules());
        for (sid, service, _, v) in &rows {
            let svc = if service_rules {
                service.clone()
            } else {
                String::new()
            };
            *per_stack.entry((*sid, svc)).or_default() += v;
        }
        let kept: std::collections::HashSet<(u64, String)> = self
            .schema_rows_of(
                b,
                q,
                per_stack
                    .into_iter()
                    .map(|((s, svc), v)| (s, svc, v))
                    .collect(),
            )?
            .into_iter()
            .map(|r| (r.sid, r.service))
            .collect();
        let mut by: HashMap<String, f64> = HashMap::new();
        for (sid, service, value, v) in rows {
            let svc = if service_rules {
                service
            } else {
                String::new()
            };
            if !value.is_empty() && kept.contains(&(sid, svc)) {
                *by.entry(value).or_default() += v;
            }
        }
        let mut out: Totals = by.into_iter().collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(limit);
        Ok(out)
    }

    /// The query's per-stack totals with its Stack Schema applied: each stack's tags and the
    /// frames it keeps, the stacks that fail a filter on a tag left out. Stacks are cached.
    fn schema_rows<B: Backend>(
        &mut self,
        b: &mut B,
        q: &Query,
    ) -> Result<Vec<SchemaRow>, StoreError> {
        let schema = q.schema.clone().filter(|s| !s.is_empty());
        let level = q.value.as_deref().is_some_and(crate::is_level);
        let rows: Vec<(u64, String, f64)> = match &schema {
            // A level's totals are per stack only: a service's own rules do not apply to it.
            Some(s) if s.has_service_rules() && !level => b
                .stack_service_totals(q, None)?
                .into_iter()
                .map(|(sid, service, _, v)| (sid, service, v))
                .collect(),
            _ => totals(b, q)?
                .into_iter()
                .map(|(sid, v)| (sid, String::new(), v))
                .collect(),
        };
        self.schema_rows_of(b, q, rows)
    }

    /// What the query's Stack Schema makes of per-(stack, service) totals: each one's tags and
    /// kept frames, those failing a filter on a tag left out. Stacks are read and cached.
    fn schema_rows_of<B: Backend>(
        &mut self,
        b: &mut B,
        q: &Query,
        rows: Vec<(u64, String, f64)>,
    ) -> Result<Vec<SchemaRow>, StoreError> {
        let mut ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        self.fill(b, &ids)?;
        let Some(schema) = q.schema.clone().filter(|s| !s.is_empty()) else {
            return Ok(rows
                .into_iter()
                .map(|(sid, service, value)| SchemaRow {
                    sid,
                    service,
                    value,
                    tags: Vec::new(),
                    keep: None,
                })
                .collect());
        };
        let tag_filters: Vec<TagFilter> = q
            .filters
            .iter()
            .filter(|f| q.is_tag(&f.label))
            .map(TagFilter::new)
            .collect::<Result<_, _>>()?;
        if self.applied_for.as_ref() != Some(&schema) {
            self.applied.clear();
            self.applied_for = Some(schema.clone());
        }
        let mut out = Vec::with_capacity(rows.len());
        for (sid, service, value) in rows {
            let key = (sid, service);
            // A stack not stored yet (its rows came first) is not cached as untagged.
            if !self.applied.contains_key(&key) && self.stacks.contains_key(&sid) {
                let names = self.expanded_names(sid);
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let a = schema.apply(&key.1, &refs);
                let keep = (a.keep.len() != names.len()).then_some(a.keep);
                self.applied.insert(key.clone(), (a.tags, keep));
            }
            let none: Applied = (Vec::new(), None);
            let (tags, keep) = self.applied.get(&key).unwrap_or(&none);
            if !tag_filters.iter().all(|f| f.keeps(tags)) {
                continue;
            }
            out.push(SchemaRow {
                sid,
                service: key.1.clone(),
                value,
                tags: tags.clone(),
                keep: keep.clone(),
            });
        }
        Ok(out)
    }

    /// Per rule of `schema`, the stacks of the query with a frame it matches and their total,
    /// and the query's total: what `baton config check` reports for a tree's rules.
    pub(crate) fn schema_matches<B: Backend>(
        &mut self,
        b: &mut B,
        q: &Query,
        schema: &baton_model::StackSchema,
    ) -> Result<(f64, Vec<baton_model::schema::RuleMatch>), StoreError> {
        self.refresh(b)?;
        let rows: Vec<(u64, String, f64)> = if schema.has_service_rules() {
            b.stack_service_totals(q, None)?
                .into_iter()
                .map(|(sid, service, _, v)| (sid, service, v))
                .collect()
        } else {
            totals(b, q)?
                .into_iter()
                .map(|(sid, v)| (sid, String::new(), v))
                .collect()
        };
        let mut ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        self.fill(b, &ids)?;
        let mut out = vec![baton_model::schema::RuleMatch::default(); schema.rules.len()];
        let mut seen: Vec<std::collections::HashSet<u64>> = vec![Default::default(); out.len()];
        let mut total = 0.0;
        for (sid, service, v) in rows {
            total += v;
            let names = self.expanded_names(sid);
            for (i, r) in schema.rules.iter().enumerate() {
                if r.applies_to(&service) && names.iter().any(|n| r.pattern.is_match(n)) {
                    out[i].total += v;
                    if seen[i].insert(sid) {
                        out[i].stacks += 1;
                    }
                }
            }
        }
        Ok((total, out))
    }

    /// A cached stack's display names, inlined functions first, leaf first.
    fn expanded_names(&self, sid: u64) -> Vec<String> {
        let Some(fids) = self.stacks.get(&sid) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(fids.len());
        for f in fids {
            out.extend(
                self.inlined
                    .get(f)
                    .into_iter()
                    .flatten()
                    .map(|i| i.display_name()),
            );
            if let Some(n) = self.names.get(f) {
                out.push(n.clone());
            }
        }
        out
    }

    /// Timeline spans, and the stacks they name: function names, leaf first, keyed by the
    /// stack id in decimal (too wide for JavaScript numbers).
    pub(crate) fn timeline<B: Backend>(
        &mut self,
        b: &mut B,
        q: &TimelineQuery,
    ) -> Result<Timeline, StoreError> {
        self.refresh(b)?;
        let mut spans = b.spans(q)?;
        let truncated = spans.len() > q.limit;
        spans.truncate(q.limit);
        let mut sids: Vec<u64> = spans
            .iter()
            .filter_map(|s| s.stack.as_deref()?.parse().ok())
            .collect();
        sids.sort_unstable();
        sids.dedup();
        self.fill(b, &sids)?;
        let mut stacks = BTreeMap::new();
        for &sid in &sids {
            let named = self.name_stacks(&[(sid, 0.0)], None);
            if let Some((idx, _)) = named.stacks.first() {
                let names = idx
                    .iter()
                    .map(|&i| named.names[i as usize].clone())
                    .collect();
                stacks.insert(sid.to_string(), names);
            }
        }
        Ok(Timeline {
            spans,
            stacks,
            truncated,
        })
    }

    /// Loads the stacks of `ids`, and their frames, that are not cached yet.
    fn fill<B: Backend>(&mut self, b: &mut B, ids: &[u64]) -> Result<(), StoreError> {
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|i| !self.stacks.contains_key(i))
            .collect();
        let mut fresh: Vec<(u64, Vec<u64>)> = Vec::with_capacity(missing.len());
        for chunk in missing.chunks(B::ID_CHUNK) {
            for (sid, text) in b.stacks(chunk)? {
                let frames = text.split(',').filter_map(|s| s.parse().ok()).collect();
                fresh.push((sid, frames));
            }
        }
        // Only the new stacks' frames can be missing: a cached stack's frames were read with it,
        // and clearing the frame caches clears the stack cache too.
        let mut need: Vec<u64> = fresh
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .filter(|f| !self.frames.contains_key(f))
            .collect();
        need.sort_unstable();
        need.dedup();
        for chunk in need.chunks(B::ID_CHUNK) {
            for (fid, f, inlined) in b.frames(chunk)? {
                self.insert_frame(fid, f, inlined.as_deref());
            }
        }
        // Stacks join the cache once their frames are in it.
        self.stacks.extend(fresh);
        Ok(())
    }

    /// Caches a frame read back from the store: itself, its display name, and the frames
    /// inlined at its address from a late symbol's chain.
    fn insert_frame(&mut self, fid: u64, f: Frame, inlined: Option<&str>) {
        let chain: Vec<(String, Option<String>, Option<u32>)> = inlined
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        if !chain.is_empty() {
            let list = chain
                .into_iter()
                .map(|(name, file, line)| Frame {
                    kind: FrameKind::Inlined,
                    function: Some(name),
                    module: f.module.clone(),
                    build_id: f.build_id.clone(),
                    address: f.address,
                    file,
                    line,
                })
                .collect();
            self.inlined.insert(fid, list);
        }
        self.names.insert(fid, f.display_name());
        self.frames.insert(fid, f);
    }

    /// Per-stack totals as interned names (inlined functions first), from the cache: equal
    /// names merge in the tree.
    fn name_stacks(&self, rows: &[(u64, f64)], value_type: Option<ValueType>) -> NamedStacks {
        let mut out = NamedStacks {
            value_type,
            names: Vec::new(),
            stacks: Vec::with_capacity(rows.len()),
        };
        // Looked up once per frame of every stack (millions for a large profile): a cheap hash
        // of ids that are already well-mixed FNV hashes.
        let mut by_frame: HashMap<u64, Vec<u32>, BuildIdHash> =
            HashMap::with_capacity_and_hasher(4096, BuildIdHash);
        let mut by_name: HashMap<String, u32> = HashMap::new();
        for (sid, v) in rows {
            let Some(fids) = self.stacks.get(sid) else {
                continue;
            };
            let mut idx = Vec::with_capacity(fids.len());
            for fid in fids {
                if let Some(is) = by_frame.get(fid) {
                    idx.extend_from_slice(is);
                    continue;
                }
                let Some(name) = self.names.get(fid) else {
                    continue;
                };
                let mut intern = |n: String| {
                    *by_name.entry(n.clone()).or_insert_with(|| {
                        out.names.push(n);
                        (out.names.len() - 1) as u32
                    })
                };
                let mut is: Vec<u32> = self
                    .inlined
                    .get(fid)
                    .into_iter()
                    .flatten()
                    .map(|f| intern(f.display_name()))
                    .collect();
                is.push(intern(name.clone()));
                idx.extend_from_slice(&is);
                by_frame.insert(*fid, is);
            }
            out.stacks.push((idx, *v));
        }
        out
    }
}

/// The query's histograms, merged per (name, key), each labelled with `profiler` only.
pub(crate) fn histograms<B: Backend>(b: &mut B, q: &Query) -> Result<Vec<Histogram>, StoreError> {
    let mut out: Vec<Histogram> = Vec::new();
    for (name, unit, key, le, count) in b.histogram_buckets(q)? {
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

/// The first build IDs' offsets, `limit` offsets in all.
pub(crate) fn first_offsets(
    groups: impl IntoIterator<Item = Unsymbolized>,
    limit: usize,
) -> Vec<Unsymbolized> {
    let mut out = Vec::new();
    let mut left = limit;
    for mut u in groups {
        if left == 0 {
            break;
        }
        u.offsets.truncate(left);
        left -= u.offsets.len();
        out.push(u);
    }
    out
}
