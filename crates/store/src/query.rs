//! Queries: a profiler, a time range and label filters, turned into SQL with bound parameters.

use crate::StoreError;

/// Label columns that can be filtered and grouped on.
pub const LABEL_COLUMNS: &[&str] = &[
    "comm", "pid", "tid", "exe", "cgroup", "host", "run", "service",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    NotEq,
    Regex,
}

/// One label filter: `comm=nginx`, `pid!=1`, `exe~/usr/bin/.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub label: String,
    pub op: FilterOp,
    pub value: String,
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, StoreError> {
        let (label, op, value) = if let Some((l, v)) = s.split_once("!=") {
            (l, FilterOp::NotEq, v)
        } else if let Some((l, v)) = s.split_once('~') {
            (l, FilterOp::Regex, v)
        } else if let Some((l, v)) = s.split_once('=') {
            (l, FilterOp::Eq, v)
        } else {
            return Err(StoreError::BadFilter(s.to_string()));
        };
        let label = label.trim();
        if !LABEL_COLUMNS.contains(&label) {
            return Err(StoreError::UnknownLabel(label.to_string()));
        }
        Ok(Filter {
            label: label.to_string(),
            op,
            value: value.to_string(),
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
        for f in &self.filters {
            // Validated by Filter::parse; re-checked so a hand-built Filter cannot inject SQL.
            let Some(col) = LABEL_COLUMNS.iter().find(|c| **c == f.label) else {
                continue;
            };
            let expr = match f.op {
                FilterOp::Eq => format!(" AND CAST({col} AS VARCHAR) = ?"),
                FilterOp::NotEq => format!(" AND CAST({col} AS VARCHAR) IS DISTINCT FROM ?"),
                FilterOp::Regex => format!(" AND regexp_full_match(CAST({col} AS VARCHAR), ?)"),
            };
            sql.push_str(&expr);
            params.push(Param::Text(f.value.clone()));
        }
        (sql, params)
    }
}

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
