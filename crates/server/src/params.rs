//! Parsing of API query strings into a store [`Query`].

use baton_model::export::Format;
use baton_model::parse_duration;
use baton_model::time::now_ms;
use baton_store::{Filter, Query};

/// Everything an API call may say.
#[derive(Debug, Clone)]
pub struct ApiParams {
    pub query: Query,
    pub step_ms: i64,
    pub limit: usize,
    pub format: Option<Format>,
    /// A label column to split a time series by (`pid`, `service`…).
    pub group_by: Option<String>,
}

/// Parses `profiler`, `value`, `since` or `from`/`to`, `filter` (repeatable), `step`, `limit`,
/// `format`, `group_by`. A filter on a service's label (`team=payments`) is a filter on the
/// label as stored with each sample, so it answers as the config was when the sample was
/// written.
pub fn parse_params(raw: &str) -> Result<ApiParams, String> {
    let mut profiler = "cpu".to_string();
    let mut value = None;
    let mut since = None;
    let mut from = None;
    let mut to = None;
    let mut filters = Vec::new();
    let mut step = None;
    let mut limit = 100usize;
    let mut format = None;
    let mut group_by = None;
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "profiler" => profiler = v.into_owned(),
            "value" => value = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "since" => {
                since = Some(
                    parse_duration(&v)
                        .map_err(|e| format!("since: {e}"))?
                        .as_millis() as i64,
                )
            }
            "from" => {
                from = Some(
                    v.parse::<i64>()
                        .map_err(|_| format!("from: {v:?} is not Unix milliseconds"))?,
                )
            }
            "to" => {
                to = Some(
                    v.parse::<i64>()
                        .map_err(|_| format!("to: {v:?} is not Unix milliseconds"))?,
                )
            }
            "filter" => {
                if !v.is_empty() {
                    filters.push(Filter::parse(&v).map_err(|e| e.to_string())?);
                }
            }
            "step" => {
                step = Some(
                    parse_duration(&v)
                        .map_err(|e| format!("step: {e}"))?
                        .as_millis() as i64,
                )
            }
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| format!("limit: {v:?} is not a number"))?
            }
            "group_by" => {
                if !v.is_empty() {
                    if !baton_store::LABEL_COLUMNS.contains(&v.as_ref())
                        && !baton_store::is_detail_label(&v)
                    {
                        return Err(format!(
                            "group_by: {v:?} is not a label; use one of {}, or a profiler's \
                             own label (lower-case letters, digits and _)",
                            baton_store::LABEL_COLUMNS.join(", ")
                        ));
                    }
                    group_by = Some(v.into_owned());
                }
            }
            "format" => {
                format = Some(Format::parse(&v).ok_or_else(|| {
                    format!("format: unknown {v:?}; use one of {}", Format::NAMES)
                })?)
            }
            // The flame graph's compact shape (`flat`), read by its handler.
            "shape" if v == "flat" || v == "flatbin" || v == "tree" => {}
            // The flat shapes' pruning (read by the flame graph handler).
            "min_share" => {
                let f: f64 = v
                    .parse()
                    .map_err(|_| format!("min_share: {v:?} is not a number"))?;
                if !(0.0..1.0).contains(&f) {
                    return Err(format!("min_share: {v} is not in [0, 1)"));
                }
            }
            "shape" => return Err(format!("shape: unknown {v:?}; use tree, flat or flatbin")),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    let now = now_ms();
    let to_ms = to.unwrap_or(now + 1);
    let from_ms = from.unwrap_or_else(|| to_ms - since.unwrap_or(3_600_000));
    if from_ms >= to_ms {
        return Err("the time range is empty: from must be before to".into());
    }
    // About 60 buckets across the range unless a step is given, never finer than 1 s.
    let step_ms = step.unwrap_or(((to_ms - from_ms) / 60).max(1000));
    Ok(ApiParams {
        query: Query {
            profiler,
            value,
            from_ms,
            to_ms,
            filters,
            schema: None,
        },
        step_ms,
        limit,
        format,
        group_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_filters_and_ranges() {
        let p = parse_params("since=5m&filter=comm%3Dnginx&filter=pid%3D7&limit=5").expect("ok");
        assert_eq!(p.query.filters.len(), 2);
        assert_eq!(p.query.to_ms - p.query.from_ms, 300_000);
        assert_eq!(p.limit, 5);
        let p = parse_params("from=1000&to=61000").expect("ok");
        assert_eq!(p.step_ms, 1000);
        assert!(parse_params("since=5x").is_err());
        assert!(parse_params("bogus=1").is_err());
        let g = parse_params("group_by=service").expect("ok");
        assert_eq!(g.group_by.as_deref(), Some("service"));
        let e = parse_params("group_by=Colour;").unwrap_err();
        assert!(e.contains("not a label"), "{e}");
        let g = parse_params("group_by=gpu").expect("a profiler's own label");
        assert_eq!(g.group_by.as_deref(), Some("gpu"));
        // A service's label is a stored one, filtered in `detail`; so is an ad-hoc script's.
        let p = parse_params("filter=colour%3Dred").expect("stored label");
        assert_eq!(p.query.filters[0].label, "colour");
        assert!(parse_params("filter=Colour%3Dred").is_err());
        let p = parse_params("filter=team%3Dpay").expect("a stored label");
        assert_eq!(p.query.filters[0].label, "team");
        assert!(parse_params("from=5&to=5").is_err());
    }
}
