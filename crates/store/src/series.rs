//! Time series over the samples: weighted totals per step, optionally one series per value of a
//! label. A value type that is a level (`live_bytes`: what is held at the end of a window, not
//! what happened in it) is never summed across windows: a step's point is, per process, the
//! mean of its windows' totals, summed over the processes of the series; and a level's flame
//! graph is, per stack, the mean over each process's windows in the range.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::query::{Dialect, Param, Query};
use crate::{Point, StoreError};

pub use baton_model::registry::is_level;

/// One series of a grouped time series: the label value (empty where the sample had none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub key: String,
    pub points: Vec<Point>,
}

/// One row of a series query: (bucket start, group key, value).
pub(crate) type SeriesRow = (i64, String, f64);

/// The SELECT of a series over `table`, returning (bucket, key, value) ordered by bucket and
/// key. `group` is a label checked by [`crate::query::group_label`].
pub(crate) fn series_sql(
    q: &Query,
    d: Dialect,
    table: &str,
    step_ms: i64,
    group: Option<&str>,
) -> (String, Vec<Param>) {
    let step = step_ms.max(1);
    let (wh, params) = q.where_in(d);
    let bucket = match d {
        Dialect::DuckDb => format!("(ts_ms // {step}) * {step}"),
        Dialect::ClickHouse => format!("intDiv(ts_ms, {step}) * {step}"),
    };
    let key = match group {
        None => "''".to_string(),
        Some(label) => crate::query::group_expr(label, d),
    };
    let level = q.value.as_deref().is_some_and(is_level);
    let sql = if level {
        // A window is one (host, pid, ts_ms): its total is the level; a process's level over a
        // step is the mean of its windows'; a series sums its processes.
        format!(
            "SELECT b, g, sum(v) FROM (
               SELECT b, g, avg(w) AS v FROM (
                 SELECT {bucket} AS b, {key} AS g, coalesce(host, '') AS h,
                        coalesce(pid, -1) AS p, ts_ms, sum(value * weight) AS w
                 FROM {table} WHERE {wh} GROUP BY b, g, h, p, ts_ms
               ) AS windows GROUP BY b, g, h, p
             ) AS processes GROUP BY b, g ORDER BY b, g"
        )
    } else {
        format!(
            "SELECT {bucket} AS b, {key} AS g, sum(value * weight) FROM {table}
             WHERE {wh} GROUP BY b, g ORDER BY b, g"
        )
    };
    (sql, params)
}

/// What a level's totals are per: each stack, or each value of a label checked by
/// [`crate::query::group_label`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum LevelKey<'a> {
    Stack,
    Label(&'a str),
}

/// The two SELECTs of a level's totals over `table`: (key as text, host, pid, weighted sum) per
/// key and process, and (host, pid, windows) per process; see [`level_totals`].
pub(crate) fn level_totals_sql(
    q: &Query,
    d: Dialect,
    table: &str,
    key: LevelKey,
) -> [(String, Vec<Param>); 2] {
    let (wh, params) = q.where_in(d);
    let key = match key {
        LevelKey::Stack => d.text("stack_id"),
        LevelKey::Label(label) => crate::query::group_expr(label, d),
    };
    let process = "coalesce(host, '') AS h, coalesce(pid, -1) AS p";
    [
        (
            format!(
                "SELECT {key} AS k, {process}, sum(value * weight) FROM {table}
                 WHERE {wh} GROUP BY k, h, p"
            ),
            params.clone(),
        ),
        (
            format!(
                "SELECT {process}, count(DISTINCT ts_ms) FROM {table} WHERE {wh} GROUP BY h, p"
            ),
            params,
        ),
    ]
}

/// Totals of a level per key: per process, the mean over its windows in the range (a window
/// where the key held nothing counts as zero), summed over processes. `keys` and `windows`
/// are the rows of [`level_totals_sql`]'s two queries; keys that are empty are left out.
pub(crate) fn level_totals(
    keys: Vec<(String, String, i64, f64)>,
    windows: Vec<(String, i64, f64)>,
) -> Vec<(String, f64)> {
    let n: BTreeMap<(String, i64), f64> = windows
        .into_iter()
        .map(|(h, p, n)| ((h, p), n.max(1.0)))
        .collect();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (key, h, p, sum) in keys.into_iter().filter(|k| !k.0.is_empty()) {
        let windows = n.get(&(h, p)).copied().unwrap_or(1.0);
        *out.entry(key).or_default() += sum / windows;
    }
    out.into_iter().collect()
}

/// The series of a query, grouped by `group_by` (a label column, or a profiler's own label such
/// as `gpu` or `syscall`) if given: the series in descending order of their largest point.
pub(crate) fn series<B: crate::read::Backend>(
    b: &mut B,
    q: &Query,
    step_ms: i64,
    group_by: Option<&str>,
) -> Result<Vec<Series>, StoreError> {
    q.no_tag_filter("time series")?;
    let col = group_by.map(crate::query::group_label).transpose()?;
    let mut by_key: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for (ts_ms, key, value) in b.series(q, step_ms, col)? {
        by_key.entry(key).or_default().push(Point { ts_ms, value });
    }
    let peak = |s: &Series| s.points.iter().map(|p| p.value).fold(f64::MIN, f64::max);
    let mut out: Vec<Series> = by_key
        .into_iter()
        .map(|(key, points)| Series { key, points })
        .collect();
    out.sort_by(|a, b| peak(b).total_cmp(&peak(a)).then_with(|| a.key.cmp(&b.key)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_the_live_values() {
        assert!(is_level("live_bytes"));
        assert!(is_level("live_count"));
        assert!(!is_level("alloc_bytes"));
        assert!(!is_level("nanoseconds"));
    }
}
