//! Prometheus's text format for metric lines, shared by the server's and the agent's `/metrics`.

use std::borrow::Cow;
use std::collections::HashSet;

/// One series: its name (with `{labels}` when it has some), help, type and value.
pub type Line = (Cow<'static, str>, &'static str, &'static str, f64);

/// Escapes a label value (backslash, quote, newline).
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text of one scrape: `# HELP` and `# TYPE` once per metric, before its first series.
pub fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    let mut described: HashSet<&str> = HashSet::new();
    for (name, help, kind, value) in lines {
        let base = name.split('{').next().unwrap_or(name);
        if described.insert(base) {
            out.push_str(&format!("# HELP {base} {help}\n# TYPE {base} {kind}\n"));
        }
        out.push_str(&format!("{name} {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_series_share_one_description() {
        let lines: Vec<Line> = vec![
            ("a_total".into(), "A.", "counter", 1.0),
            ("b{pid=\"1\"}".into(), "B.", "gauge", 2.0),
            ("b{pid=\"2\"}".into(), "B.", "gauge", 3.0),
        ];
        let text = render(&lines);
        assert_eq!(text.matches("# HELP b B.").count(), 1);
        assert!(text.contains("b{pid=\"2\"} 3\n"));
        assert!(text.starts_with("# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"));
        assert_eq!(label_value("a\"b\\"), "a\\\"b\\\\");
    }
}
