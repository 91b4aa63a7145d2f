//! ClickHouse's `TabSeparated` format: what inserts send and selects answer.

/// A TSV field: `\N` is NULL; `\\`, `\t`, `\n` and `\'` are unescaped.
pub(super) fn unescape(field: &str) -> Option<String> {
    if field == "\\N" {
        return None;
    }
    if !field.contains('\\') {
        return Some(field.to_string());
    }
    let mut out = String::with_capacity(field.len());
    let mut it = field.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    Some(out)
}

/// A TSV field for an insert.
fn esc(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

/// Appends one TSV row.
pub(super) fn push_row(out: &mut String, fields: &[Option<String>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        esc(out, f.as_deref());
    }
    out.push('\n');
}

/// A field that is there.
pub(super) fn s<T: ToString>(v: T) -> Option<String> {
    Some(v.to_string())
}

/// A field that may be missing.
pub(super) fn opt<T: ToString>(v: Option<T>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// A field of a sort-key column, where ClickHouse keeps no NULL: missing is ''.
pub(super) fn or_empty(v: Option<&str>) -> Option<String> {
    Some(v.unwrap_or_default().to_string())
}

/// Rows of `text` (a SELECT's answer), as fields.
pub(super) fn parse(text: &str) -> Vec<Vec<Option<String>>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(unescape).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_escapes_round_trip() {
        let mut out = String::new();
        esc(&mut out, Some("a\tb\\c\nd"));
        assert_eq!(out, "a\\tb\\\\c\\nd");
        assert_eq!(unescape(&out).as_deref(), Some("a\tb\\c\nd"));
        assert_eq!(unescape("\\N"), None);
    }
}
