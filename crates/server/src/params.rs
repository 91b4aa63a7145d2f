//! Parsing of API query strings into a store [`Query`].

use baton_model::export::Format;
use baton_model::parse_duration;
use baton_model::time::now_ms;
use baton_store::{Filter, FilterOp, Query};

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
/// `format`, `group_by`.
pub fn parse_params(raw: &str) -> Result<ApiParams, String> {
    parse_params_with(raw, None)
}

/// A filter on a label that a service of the config carries (`team=payments`) becomes a filter
/// on the `service` column: the services with that label value, or (with `!=`) the others.
fn service_label_filter(
    text: &str,
    config: &baton_config::Config,
) -> Option<Result<Filter, String>> {
    let (label, op, value) = Filter::split(text).ok()?;
    if !config
        .services
        .values()
        .any(|s| s.labels.contains_key(label))
    {
        return None;
    }
    let op = match op {
        FilterOp::Eq => FilterOp::AnyOf,
        FilterOp::NotEq => FilterOp::NoneOf,
        _ => {
            return Some(Err(format!(
                "service label `{label}`: use = or != (regexes apply to stored labels only)"
            )))
        }
    };
    let values = config
        .services
        .iter()
        .filter(|(_, s)| s.labels.get(label).map(String::as_str) == Some(value))
        .map(|(name, _)| name.clone())
        .collect();
    Some(Ok(Filter {
        label: "service".into(),
        op,
        value: text.to_string(),
        values,
    }))
}

/// Like [`parse_params`]; with a config, filters may also name the services' labels.
pub fn parse_params_with(
    raw: &str,
    config: Option<&baton_config::Config>,
) -> Result<ApiParams, String> {
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
                    // A label the config gives services (`team=payments`) selects those
                    // services; any other label is a stored one.
                    match config.and_then(|c| service_label_filter(&v, c)) {
                        Some(f) => filters.push(f?),
                        None => filters.push(Filter::parse(&v).map_err(|e| e.to_string())?),
                    }
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
        // Service labels resolve through the config to the services that carry them.
        let cfg = baton_config::load(
            &[baton_config::SourceFile {
                path: "s.toml".into(),
                text: "[services.a]\nselector = { comm = \"a\" }\nlabels = { team = \"pay\" }\n[services.b]\nselector = { comm = \"b\" }\nlabels = { team = \"search\" }\n".into(),
            }],
            &["cpu"],
        )
        .expect("config");
        let p = parse_params_with("filter=team%3Dpay", Some(&cfg)).expect("team=pay");
        assert_eq!(p.query.filters[0].label, "service");
        assert_eq!(p.query.filters[0].op, FilterOp::AnyOf);
        assert_eq!(p.query.filters[0].values, vec!["a".to_string()]);
        let p = parse_params_with("filter=team!%3Dpay", Some(&cfg)).expect("team!=pay");
        assert_eq!(p.query.filters[0].op, FilterOp::NoneOf);
        assert!(parse_params_with("filter=team~p.*", Some(&cfg)).is_err());
        // Any other label is a stored one (an ad-hoc script's key), filtered in `detail`.
        let p = parse_params_with("filter=colour%3Dred", Some(&cfg)).expect("stored label");
        assert_eq!(p.query.filters[0].label, "colour");
        assert!(parse_params_with("filter=Colour%3Dred", Some(&cfg)).is_err());
        let p = parse_params("filter=team%3Dpay").expect("no config: a stored label");
        assert_eq!(p.query.filters[0].label, "team");
        assert!(parse_params("from=5&to=5").is_err());
    }
}
