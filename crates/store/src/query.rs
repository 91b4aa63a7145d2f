//! Queries: a profiler, a time range and label filters, turned into SQL with bound parameters.

use crate::StoreError;

/// Label columns that can be filtered and grouped on.
pub const LABEL_COLUMNS: &[&str] = &[
    "comm", "pid", "tid", "exe", "cgroup", "host", "run", "service",
];

/// Profiler-specific labels, stored together in the `detail` column as `k=v;k=v`. They can be
/// filtered on (`state=sleeping`, `syscall!=futex`, `op~write.*`) like the columns.
pub const DETAIL_LABELS: &[&str] = &["state", "syscall", "op", "function", "request"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    NotEq,
    Regex,
    /// The label is one of `values` (e.g. the services that carry a service label).
    AnyOf,
    /// The label is none of `values`, or absent.
    NoneOf,
}

/// One label filter: `comm=nginx`, `pid!=1`, `exe~/usr/bin/.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub label: String,
    pub op: FilterOp,
    pub value: String,
    /// The set for [`FilterOp::AnyOf`] and [`FilterOp::NoneOf`].
    pub values: Vec<String>,
}

impl Filter {
    /// Splits `label=value`, `label!=value` or `label~regex` into its parts.
    pub fn split(s: &str) -> Result<(&str, FilterOp, &str), StoreError> {
        let (label, op, value) = if let Some((l, v)) = s.split_once("!=") {
            (l, FilterOp::NotEq, v)
        } else if let Some((l, v)) = s.split_once('~') {
            (l, FilterOp::Regex, v)
        } else if let Some((l, v)) = s.split_once('=') {
            (l, FilterOp::Eq, v)
        } else {
            return Err(StoreError::BadFilter(s.to_string()));
        };
        Ok((label.trim(), op, value))
    }

    pub fn parse(s: &str) -> Result<Filter, StoreError> {
        let (label, op, value) = Filter::split(s)?;
        if !LABEL_COLUMNS.contains(&label) && !DETAIL_LABELS.contains(&label) {
            return Err(StoreError::UnknownLabel(label.to_string()));
        }
        Ok(Filter {
            label: label.to_string(),
            op,
            value: value.to_string(),
            values: Vec::new(),
        })
    }
}

/// A bound SQL parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub profiler: String,
    /// The value type (`alloc_bytes`); `None` is the profiler's default one.
    pub value: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub filters: Vec<Filter>,
}

impl Query {
    /// The WHERE clause and its parameters. Label names come from [`LABEL_COLUMNS`] only, so
    /// nothing user-supplied is spliced into SQL.
    pub(crate) fn where_clause(&self) -> (String, Vec<Param>) {
        let mut sql = String::from("profiler = ? AND ts_ms >= ? AND ts_ms < ?");
        let mut params = vec![
            Param::Text(self.profiler.clone()),
            Param::Int(self.from_ms),
            Param::Int(self.to_ms),
        ];
        match &self.value {
            Some(v) => {
                sql.push_str(" AND value_type = ?");
                params.push(Param::Text(v.clone()));
            }
            None => sql.push_str(" AND coalesce(value_index, 0) = 0"),
        }
        for f in &self.filters {
            if DETAIL_LABELS.contains(&f.label.as_str()) {
                let pair = format!("{}={}", f.label, f.value);
                match f.op {
                    FilterOp::Eq => {
                        sql.push_str(
                            " AND list_contains(string_split(coalesce(detail, ''), ';'), ?)",
                        );
                        params.push(Param::Text(pair));
                    }
                    FilterOp::NotEq => {
                        sql.push_str(
                            " AND NOT list_contains(string_split(coalesce(detail, ''), ';'), ?)",
                        );
                        params.push(Param::Text(pair));
                    }
                    FilterOp::Regex => {
                        sql.push_str(" AND regexp_matches(coalesce(detail, ''), ?)");
                        params.push(Param::Text(format!("(^|;){}=({})(;|$)", f.label, f.value)));
                    }
                    FilterOp::AnyOf | FilterOp::NoneOf => {}
                }
                continue;
            }
            // Validated by Filter::parse; re-checked so a hand-built Filter cannot inject SQL.
            if let Some(col) = LABEL_COLUMNS.iter().find(|c| **c == f.label) {
                column_filter(col, f, &mut sql, &mut params);
            }
        }
        (sql, params)
    }
}

impl Query {
    /// The WHERE clause over the `histograms` table: the same range and label filters, where a
    /// profiler-specific label (`syscall=write`) matches the histogram's key. `tid` and
    /// `cgroup` filters do not apply to histograms and are left out.
    pub(crate) fn histogram_where(&self) -> (String, Vec<Param>) {
        let mut sql = String::from("profiler = ? AND ts_ms >= ? AND ts_ms < ?");
        let mut params = vec![
            Param::Text(self.profiler.clone()),
            Param::Int(self.from_ms),
            Param::Int(self.to_ms),
        ];
        for f in &self.filters {
            let col = if DETAIL_LABELS.contains(&f.label.as_str()) {
                "key"
            } else {
                match HISTOGRAM_COLUMNS.iter().find(|c| **c == f.label) {
                    Some(c) => c,
                    None => continue,
                }
            };
            column_filter(col, f, &mut sql, &mut params);
        }
        (sql, params)
    }
}

/// Appends one filter on a label column (from a fixed list, never user text) to a WHERE clause.
fn column_filter(col: &str, f: &Filter, sql: &mut String, params: &mut Vec<Param>) {
    let set = || vec!["?"; f.values.len()].join(", ");
    let expr = match f.op {
        FilterOp::Eq => format!(" AND CAST({col} AS VARCHAR) = ?"),
        FilterOp::NotEq => format!(" AND CAST({col} AS VARCHAR) IS DISTINCT FROM ?"),
        FilterOp::Regex => format!(" AND regexp_full_match(CAST({col} AS VARCHAR), ?)"),
        FilterOp::AnyOf if f.values.is_empty() => " AND FALSE".to_string(),
        FilterOp::NoneOf if f.values.is_empty() => String::new(),
        FilterOp::AnyOf => format!(" AND CAST({col} AS VARCHAR) IN ({})", set()),
        FilterOp::NoneOf => format!(
            " AND ({col} IS NULL OR CAST({col} AS VARCHAR) NOT IN ({}))",
            set()
        ),
    };
    sql.push_str(&expr);
    match f.op {
        FilterOp::AnyOf | FilterOp::NoneOf => {
            params.extend(f.values.iter().cloned().map(Param::Text))
        }
        _ => params.push(Param::Text(f.value.clone())),
    }
}

/// Label columns of the `histograms` table.
const HISTOGRAM_COLUMNS: &[&str] = &["comm", "pid", "exe", "host", "run", "service"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters() {
        let f = Filter::parse("comm=nginx").expect("ok");
        assert_eq!(
            (f.label.as_str(), f.op, f.value.as_str()),
            ("comm", FilterOp::Eq, "nginx")
        );
        assert_eq!(Filter::parse("pid!=1").expect("ok").op, FilterOp::NotEq);
        assert_eq!(
            Filter::parse("exe~/usr/.*").expect("ok").op,
            FilterOp::Regex
        );
        assert!(matches!(
            Filter::parse("color=red"),
            Err(StoreError::UnknownLabel(_))
        ));
        assert!(matches!(
            Filter::parse("comm"),
            Err(StoreError::BadFilter(_))
        ));
    }
}
