//! The Prometheus text exposition format, read just far enough to pick one series' value for
//! a trigger: `name{label="value",…} value [timestamp]` lines, `#` comments skipped.

use baton_config::metric::{parse_label_set, MetricSelector};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every well-formed sample line of a scrape; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                let Some(labels) = parse_label_set(&line[open + 1..close]) else {
                    continue;
                };
                (&line[..open], labels, &line[close + 1..])
            }
            None => match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, Vec::new(), r),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Series {
            name: name.trim().to_string(),
            labels,
            value,
        });
    }
    out
}

/// The largest value among the series `sel` matches, if any matches.
pub fn value(sel: &MetricSelector, series: &[Series]) -> Option<f64> {
    series
        .iter()
        .filter(|s| s.name == sel.name && sel.labels.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_latency_p99_seconds p99 latency
# TYPE http_latency_p99_seconds gauge
http_latency_p99_seconds{route="/a",code="200"} 0.25
http_latency_p99_seconds{route="/b",code="200"} 0.75 1700000000000
queue_depth 12
weird{msg="a \"quoted\", comma"} 3e2
broken{x="1" 5
"#;

    #[test]
    fn parses_lines_and_picks_series() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(
            s[3].labels,
            vec![("msg".into(), "a \"quoted\", comma".into())]
        );
        assert_eq!(s[3].value, 300.0);
        let sel = |t: &str| MetricSelector::parse(t).expect("selector");
        assert_eq!(value(&sel("http_latency_p99_seconds"), &s), Some(0.75));
        let a = sel(r#"http_latency_p99_seconds{route="/a"}"#);
        assert_eq!(value(&a, &s), Some(0.25));
        assert_eq!(value(&sel("queue_depth"), &s), Some(12.0));
        assert_eq!(value(&sel("missing"), &s), None);
        assert!(MetricSelector::parse("9bad").is_err());
        assert!(MetricSelector::parse("x{a=1}").is_err());
    }
}
