//! Queries: a profiler, a time range and label filters, turned into SQL with bound parameters.

use crate::StoreError;

/// Label columns that can be filtered and grouped on.
pub const LABEL_COLUMNS: &[&str] = &[
    "comm", "pid", "tid", "exe", "cgroup", "host", "run", "service",
];

/// A label that can be grouped on: a column, or a label kept in `detail` (a profiler's own,
/// or one a thread published); an error names any other.
pub(crate) fn group_label(label: &str) -> Result<&str, StoreError> {
    if LABEL_COLUMNS.contains(&label) || is_detail_label(label) {
        Ok(label)
    } else {
        Err(StoreError::UnknownLabel(label.to_string()))
    }
}

/// The SQL text of a label checked by [`group_label`], '' where a row lacks it. A detail
/// label's name is letters, digits and `_` only, so it is safe inside the pattern.
pub(crate) fn group_expr(label: &str, d: Dialect) -> String {
    if LABEL_COLUMNS.contains(&label) {
        return format!("coalesce({}, '')", d.text(label));
    }
    debug_assert!(is_detail_label(label));
    match d {
        Dialect::DuckDb => {
            format!("regexp_extract(';' || coalesce(detail, ''), ';{label}=([^;]*)', 1)")
        }
        Dialect::ClickHouse => {
            format!("extract(concat(';', ifNull(detail, '')), ';{label}=([^;]*)')")
        }
    }
}

/// The built-in profilers' own labels. They, and any other label without a column (an ad-hoc
/// script's keys, an ingest's extra labels), are stored together in the `detail` column as
/// `k=v;k=v`, and can be filtered on (`state=sleeping`, `syscall!=futex`, `op~write.*`) like the
/// columns.
pub const DETAIL_LABELS: &[&str] = &["state", "syscall", "op", "function", "request"];

/// Whether a label is kept in `detail`: a name of lower-case letters, digits and `_` that is
/// not a column (nor `baton_weight`, which the wire format uses for weights).
pub fn is_detail_label(name: &str) -> bool {
    !LABEL_COLUMNS.contains(&name)
        && name != "baton_weight"
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

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
        if !LABEL_COLUMNS.contains(&label) && !is_detail_label(label) {
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

/// The SQL a backend speaks. Only what differs is here; the rest is common SQL that DuckDB and
/// ClickHouse 18.16 (and later) both accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    DuckDb,
    ClickHouse,
}

impl Dialect {
    pub(crate) fn text(self, col: &str) -> String {
        match self {
            Dialect::DuckDb => format!("CAST({col} AS VARCHAR)"),
            Dialect::ClickHouse => format!("toString({col})"),
        }
    }

    fn has_pair(self) -> &'static str {
        match self {
            Dialect::DuckDb => "list_contains(string_split(coalesce(detail, ''), ';'), ?)",
            Dialect::ClickHouse => "has(splitByChar(';', ifNull(detail, '')), ?)",
        }
    }

    fn regex(self, expr: &str) -> String {
        match self {
            Dialect::DuckDb => format!("regexp_matches({expr}, ?)"),
            Dialect::ClickHouse => format!("match({expr}, ?)"),
        }
    }

    /// A column's text equals a value; a missing value (NULL, or '' where ClickHouse keeps
    /// sort-key columns non-nullable) never does.
    fn not_eq(self, col: &str) -> String {
        match self {
            Dialect::DuckDb => format!("CAST({col} AS VARCHAR) IS DISTINCT FROM ?"),
            Dialect::ClickHouse => format!("({col} IS NULL OR toString({col}) != ?)"),
        }
    }
}

/// `sql` with each `?` replaced by its parameter as a literal, for backends without bound
/// parameters (ClickHouse 18.16's HTTP interface has none). The fixed SQL has no `?` of its own.
pub(crate) fn inline(sql: &str, params: &[Param]) -> String {
    let mut out = String::with_capacity(sql.len() + 16 * params.len());
    let mut it = params.iter();
    for c in sql.chars() {
        if c == '?' {
            match it.next() {
                Some(Param::Int(i)) => out.push_str(&i.to_string()),
                Some(Param::Text(t)) => out.push_str(&quote(t)),
                None => out.push('?'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A ClickHouse string literal: quoted, with `\` and `'` escaped.
pub(crate) fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '\'' => q.push_str("\\'"),
            '\0' => q.push_str("\\0"),
            c => q.push(c),
        }
    }
    q.push('\'');
    q
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
    /// Stack Schema rules to apply as stacks are read; a filter on a key they tag with is
    /// applied to the tags, not to stored labels.
    pub schema: Option<std::sync::Arc<baton_model::StackSchema>>,
}

impl Query {
    /// Whether `label` is a key the query's Stack Schema tags with.
    pub fn is_tag(&self, label: &str) -> bool {
        self.schema.as_ref().is_some_and(|s| s.tags_key(label))
    }

    /// An error when the query filters on a Stack Schema tag, for answers (`what`) that do not
    /// read stacks and so cannot apply one.
    pub(crate) fn no_tag_filter(&self, what: &'static str) -> Result<(), StoreError> {
        match self.filters.iter().find(|f| self.is_tag(&f.label)) {
            Some(f) => Err(StoreError::TagFilter {
                tag: f.label.clone(),
                what,
            }),
            None => Ok(()),
        }
    }

    /// Whether any filter is on a Stack Schema tag.
    pub(crate) fn has_tag_filter(&self) -> bool {
        self.filters.iter().any(|f| self.is_tag(&f.label))
    }
}

impl Query {
    /// The WHERE clause and its parameters. Label names come from [`LABEL_COLUMNS`] only, so
    /// nothing user-supplied is spliced into SQL.
    pub(crate) fn where_clause(&self) -> (String, Vec<Param>) {
        self.where_in(Dialect::DuckDb)
    }

    pub(crate) fn where_in(&self, d: Dialect) -> (String, Vec<Param>) {
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
            None => sql.push_str(match d {
                Dialect::DuckDb => " AND coalesce(value_index, 0) = 0",
                Dialect::ClickHouse => " AND value_index = 0",
            }),
        }
        for f in &self.filters {
            // Tags are computed from stacks as they are read (`read::Cache`).
            if self.is_tag(&f.label) {
                continue;
            }
            if is_detail_label(&f.label) {
                let pair = format!("{}={}", f.label, f.value);
                match f.op {
                    FilterOp::Eq => {
                        sql.push_str(&format!(" AND {}", d.has_pair()));
                        params.push(Param::Text(pair));
                    }
                    FilterOp::NotEq => {
                        sql.push_str(&format!(" AND NOT {}", d.has_pair()));
                        params.push(Param::Text(pair));
                    }
                    FilterOp::Regex => {
                        let e = match d {
                            Dialect::DuckDb => "coalesce(detail, '')",
                            Dialect::ClickHouse => "ifNull(detail, '')",
                        };
                        sql.push_str(&format!(" AND {}", d.regex(e)));
                        params.push(Param::Text(format!("(^|;){}=({})(;|$)", f.label, f.value)));
                    }
                    FilterOp::AnyOf | FilterOp::NoneOf => {}
                }
                continue;
            }
            // Validated by Filter::parse; re-checked so a hand-built Filter cannot inject SQL.
            if let Some(col) = LABEL_COLUMNS.iter().find(|c| **c == f.label) {
                column_filter(d, col, f, &mut sql, &mut params);
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
        self.histogram_where_in(Dialect::DuckDb)
    }

    pub(crate) fn histogram_where_in(&self, d: Dialect) -> (String, Vec<Param>) {
        let mut sql = String::from("profiler = ? AND ts_ms >= ? AND ts_ms < ?");
        let mut params = vec![
            Param::Text(self.profiler.clone()),
            Param::Int(self.from_ms),
            Param::Int(self.to_ms),
        ];
        for f in &self.filters {
            let col = if is_detail_label(&f.label) {
                "key"
            } else {
                match HISTOGRAM_COLUMNS.iter().find(|c| **c == f.label) {
                    Some(c) => c,
                    None => continue,
                }
            };
            column_filter(d, col, f, &mut sql, &mut params);
        }
        (sql, params)
    }
}

/// Appends one filter on a label column (from a fixed list, never user text) to a WHERE clause.
fn column_filter(d: Dialect, col: &str, f: &Filter, sql: &mut String, params: &mut Vec<Param>) {
    let set = || vec!["?"; f.values.len()].join(", ");
    let t = d.text(col);
    let expr = match f.op {
        FilterOp::Eq => format!(" AND {t} = ?"),
        FilterOp::NotEq => format!(" AND {}", d.not_eq(col)),
        FilterOp::Regex => match d {
            Dialect::DuckDb => format!(" AND regexp_full_match({t}, ?)"),
            Dialect::ClickHouse => format!(" AND match({t}, ?)"),
        },
        FilterOp::AnyOf if f.values.is_empty() => " AND 1 = 0".to_string(),
        FilterOp::NoneOf if f.values.is_empty() => String::new(),
        FilterOp::AnyOf => format!(" AND {t} IN ({})", set()),
        FilterOp::NoneOf => format!(" AND ({col} IS NULL OR {t} NOT IN ({}))", set()),
    };
    sql.push_str(&expr);
    match (f.op, d) {
        (FilterOp::AnyOf | FilterOp::NoneOf, _) => {
            params.extend(f.values.iter().cloned().map(Param::Text))
        }
        // ClickHouse's match() finds the pattern anywhere; anchor it as a full match.
        (FilterOp::Regex, Dialect::ClickHouse) => {
            params.push(Param::Text(format!("^(?:{})$", f.value)))
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
        assert_eq!(Filter::parse("fd=3").expect("a detail label").label, "fd");
        assert!(matches!(
            Filter::parse("Color=red"),
            Err(StoreError::UnknownLabel(_))
        ));
        assert!(matches!(
            Filter::parse("comm"),
            Err(StoreError::BadFilter(_))
        ));
    }
}
