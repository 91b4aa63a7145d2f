//! The Prometheus text exposition format, read just far enough to pick one series' value for
//! a trigger: `name{label="value",…} value [timestamp]` lines, `#` comments skipped.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses a label set body (between the braces): `a="x",b="y\"z"`.
fn parse_labels(body: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key, value));
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(out)
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
                let Some(labels) = parse_labels(&line[open + 1..close]) else {
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

/// A trigger's series selector: `name` or `name{label="value",…}` (every given label must match).
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let s = s.trim();
        let (name, labels) = match s.find('{') {
            Some(open) => {
                let body = s[open + 1..]
                    .strip_suffix('}')
                    .ok_or_else(|| format!("bad metric selector {s:?}: missing `}}`"))?;
                let labels = parse_labels(body).ok_or_else(|| {
                    format!("bad metric selector {s:?}: use name{{label=\"value\"}}")
                })?;
                (&s[..open], labels)
            }
            None => (s, Vec::new()),
        };
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            return Err(format!("bad metric name {name:?}"));
        }
        Ok(Selector {
            name: name.to_string(),
            labels,
        })
    }

    /// The largest value among the series it matches, if any matches.
    pub fn value(&self, series: &[Series]) -> Option<f64> {
        series
            .iter()
            .filter(|s| s.name == self.name && self.labels.iter().all(|l| s.labels.contains(l)))
            .map(|s| s.value)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    }
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
        let any = Selector::parse("http_latency_p99_seconds").expect("selector");
        assert_eq!(any.value(&s), Some(0.75));
        let a = Selector::parse(r#"http_latency_p99_seconds{route="/a"}"#).expect("selector");
        assert_eq!(a.value(&s), Some(0.25));
        assert_eq!(
            Selector::parse("queue_depth").expect("q").value(&s),
            Some(12.0)
        );
        assert_eq!(Selector::parse("missing").expect("m").value(&s), None);
        assert!(Selector::parse("9bad").is_err());
        assert!(Selector::parse("x{a=1}").is_err());
    }
}
