//! Prometheus series selectors, as `prometheus` triggers name them: `name` or
//! `name{label="value",…}`. One definition for validation here and for scraping in the agent.

/// A series name and the labels a series must carry (all of them) to match.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSelector {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// Parses a label set body (between the braces): `a="x",b="y\"z"`. The Prometheus text format
/// writes labels the same way, so the scraper parses scraped lines with it too.
pub fn parse_label_set(body: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        if key.is_empty() {
            return None;
        }
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

impl MetricSelector {
    pub fn parse(s: &str) -> Result<MetricSelector, String> {
        let s = s.trim();
        let (name, labels) = match s.find('{') {
            Some(open) => {
                let labels = s[open + 1..]
                    .strip_suffix('}')
                    .and_then(parse_label_set)
                    .ok_or("label matchers are written {label=\"value\",…}")?;
                (&s[..open], labels)
            }
            None => (s, Vec::new()),
        };
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !ok {
            return Err(
                "a metric name is letters, digits, `_` and `:`, not starting with a digit".into(),
            );
        }
        Ok(MetricSelector {
            name: name.to_string(),
            labels,
        })
    }
}
