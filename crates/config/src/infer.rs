//! A bpftrace script as users already have it, with no `// baton:` header: each map's kind is
//! inferred from how the script uses it, for `baton record adhoc` (a config tree still needs the
//! header, where a script is a profiler with an owner and resources).
//!
//! - keyed by `ustack` or `kstack`: `stacks`, with its keys in order;
//! - given `hist()` or `lhist()`: `histogram`, keyed as written;
//! - a scalar (`@n = count()`): `series`;
//! - anything else (keyed by labels alone, working state such as `@start[tid] = nsecs`):
//!   `scratch`, never stored.
//!
//! The anonymous map `@` is renamed `@anon`.

/// One use of a map: where its `@` is and where its name ends.
pub(crate) struct MapRef {
    pub(crate) name: String,
    pub(crate) at: usize,
    pub(crate) end: usize,
}

/// Every map reference in `script`, skipping comments and strings.
pub(crate) fn map_refs(script: &str) -> Vec<MapRef> {
    let b = script.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'@' => {
                let at = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(MapRef {
                    name: script[at + 1..i].to_string(),
                    at,
                    end: i,
                });
            }
            _ => i += 1,
        }
    }
    out
}

/// The key expressions in brackets right after a map's name (`@m[comm, ustack]`), split at
/// top-level commas; `None` when no bracket follows.
fn keys_at(script: &str, end: usize) -> Option<Vec<String>> {
    let rest = &script[end..];
    let trimmed = rest.trim_start();
    if !trimmed.starts_with('[') {
        return None;
    }
    let start = end + (rest.len() - trimmed.len()) + 1;
    let mut depth = 0i32;
    let mut keys = Vec::new();
    let mut cur = String::new();
    for c in script[start..].chars() {
        match c {
            '[' | '(' => {
                depth += 1;
                cur.push(c);
            }
            ']' if depth == 0 => {
                keys.push(cur.trim().to_string());
                return Some(keys);
            }
            ']' | ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => keys.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    None
}

/// What follows `= ` after a use of a map (and its keys), if it is an assignment.
fn assigned_at(script: &str, mut end: usize) -> Option<&str> {
    let rest = script[end..].trim_start();
    end = script.len() - rest.len();
    let after = if rest.starts_with('[') {
        let close = rest.find(']')?;
        &script[end + close + 1..]
    } else {
        rest
    };
    let after = after.trim_start();
    let rhs = after.strip_prefix('=')?;
    (!rhs.starts_with('=')).then(|| rhs.trim_start())
}

/// Any text as a name Baton takes (lower-case letters, digits, `_`, not starting with a digit):
/// `comm` stays, `args->fd` becomes `args_fd`.
pub fn key_name(expr: &str) -> String {
    let mut s: String = expr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    let s = s.trim_matches('_').to_string();
    match s.chars().next() {
        None => "key".into(),
        Some(c) if c.is_ascii_digit() => format!("k{s}"),
        _ => s,
    }
}

/// `script` with a header inferred from its maps, and one line per map saying what was
/// inferred. `Err` when it has no map to store.
pub fn infer_header(
    script: &str,
    name: &str,
    owner: &str,
) -> Result<(String, Vec<String>), String> {
    // The anonymous map gets a name.
    let mut body = String::with_capacity(script.len() + 16);
    let mut last = 0;
    for r in map_refs(script).iter().filter(|r| r.name.is_empty()) {
        body.push_str(&script[last..r.at]);
        body.push_str("@anon");
        last = r.end;
    }
    body.push_str(&script[last..]);
    let refs = map_refs(&body);
    let mut names: Vec<&str> = Vec::new();
    for r in &refs {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let mut header = format!(
        "// baton:\n// name = \"{name}\"\n// owner = \"{owner}\"\n\
         // description = \"bpftrace one-off; map kinds inferred\"\n"
    );
    let mut notes = Vec::new();
    for n in names {
        let uses: Vec<&MapRef> = refs.iter().filter(|r| r.name == n).collect();
        let keys = uses
            .iter()
            .find_map(|r| keys_at(&body, r.end))
            .unwrap_or_default();
        let hist = uses.iter().any(|r| {
            assigned_at(&body, r.end)
                .is_some_and(|v| v.starts_with("hist(") || v.starts_with("lhist("))
        });
        let stack = keys.iter().any(|k| k == "ustack" || k == "kstack");
        let names_of: Vec<String> = keys
            .iter()
            .map(|k| match k.as_str() {
                "ustack" | "kstack" | "pid" | "tid" | "comm" => k.clone(),
                other => key_name(other),
            })
            .collect();
        let (kind, why) = if hist {
            ("histogram", "given hist()".to_string())
        } else if stack {
            ("stacks", format!("keyed by {}", keys.join(", ")))
        } else if keys.is_empty() {
            ("series", "a scalar".to_string())
        } else {
            (
                "scratch",
                format!(
                    "keyed by {} with no stack: working state, not stored (key it by ustack or \
                     kstack to store it)",
                    keys.join(", ")
                ),
            )
        };
        header.push_str(&format!("// [maps.{n}]\n// kind = \"{kind}\"\n"));
        if !names_of.is_empty() && kind != "series" && kind != "scratch" {
            let list: Vec<String> = names_of.iter().map(|k| format!("\"{k}\"")).collect();
            header.push_str(&format!("// keys = [{}]\n", list.join(", ")));
        }
        notes.push(format!("@{n}: {kind} ({why})"));
    }
    if notes.iter().all(|n| n.contains(": scratch")) {
        return Err(
            "the script has no map to store: key one by ustack or kstack, give one hist(), or \
             count into a scalar (@n = count())"
                .into(),
        );
    }
    Ok((format!("{header}{body}\n"), notes))
}

/// Whether `script` has a `// baton:` header.
pub fn has_header(script: &str) -> bool {
    script.lines().any(|l| l.trim() == "// baton:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> crate::adhoc::AdhocDef {
        let f = crate::SourceFile {
            path: "t.bt".into(),
            text: text.into(),
        };
        crate::load(&[f], &["cpu"])
            .map_err(|e| e.to_string())
            .expect("the inferred header is valid")
            .adhoc
            .into_values()
            .next()
            .expect("one")
    }

    #[test]
    fn a_one_liner_gets_the_kinds_its_maps_are_used_as() {
        let script = "profile:hz:49 /pid == 42/ { @hot[ustack] = count(); @n = count(); }\n\
                      kprobe:vfs_read { @start[tid] = nsecs; @lat[comm] = hist(arg2); }";
        let (text, notes) = infer_header(script, "oneliner", "me").expect("inferred");
        assert_eq!(
            notes,
            [
                "@hot: stacks (keyed by ustack)",
                "@n: series (a scalar)",
                "@start: scratch (keyed by tid with no stack: working state, not stored (key it by ustack or kstack to store it))",
                "@lat: histogram (given hist())",
            ]
        );
        let def = load(&text);
        assert_eq!(def.maps.len(), 4);
        assert!(has_header(&text) && !has_header(script));
    }

    #[test]
    fn the_anonymous_map_is_named_and_keys_become_labels() {
        let (text, notes) = infer_header(
            "tracepoint:syscalls:sys_enter_read { @[comm, args->fd, kstack] = count(); }",
            "x",
            "me",
        )
        .expect("inferred");
        assert!(text.contains("@anon[comm, args->fd, kstack]"), "{text}");
        assert!(
            text.contains("keys = [\"comm\", \"args_fd\", \"kstack\"]"),
            "{text}"
        );
        assert_eq!(notes, ["@anon: stacks (keyed by comm, args->fd, kstack)"]);
        load(&text);
        assert!(infer_header("BEGIN { @x[pid] = 1; }", "x", "me").is_err());
    }
}
