//! Ad-hoc profilers: bpftrace scripts (`*.bt`) in the config tree, declared by a TOML header
//! written in the script's own comments.
//!
//! ```text
//! // baton:
//! // name = "read_sizes"
//! // owner = "storage-team"
//! // description = "sizes of successful read() calls, per command"
//! // resources = [{ name = "tracepoint:syscalls:sys_exit_read", shared = 4 }]
//! // max_duration = "10m"
//! // [maps.read_bytes]
//! // kind = "histogram"
//! // keys = ["comm"]
//! // unit = "bytes"
//! tracepoint:syscalls:sys_exit_read /args->ret > 0/ { @read_bytes[comm] = hist(args->ret); }
//! ```
//!
//! The header is the run of `//` lines right after a `// baton:` line. Its lines are parsed
//! in place (the `//` become spaces), so every error points at the script's own line and column.
//! Every map the script uses must be declared, so that its output can be stored: `stacks` (keyed
//! by `ustack`/`kstack` and labels), `histogram` (`hist()`/`lhist()`), `series` (a scalar, one
//! point per print) or `scratch` (working state, never stored).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::schema::ResourceDoc;
use crate::{Problem, ResourceSpec, SourceFile};

/// A validated ad-hoc profiler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdhocDef {
    pub name: String,
    pub owner: String,
    pub description: String,
    /// The script's path in the tree.
    pub file: PathBuf,
    /// The whole script, header included (bpftrace reads the header as comments).
    pub script: String,
    pub resources: Vec<ResourceSpec>,
    /// The longest a run may last, forced or not.
    #[serde(with = "crate::schema::secs")]
    pub max_duration: Duration,
    /// The most bytes of output a run may print before it is stopped.
    pub max_output_bytes: u64,
    /// Default positional parameters (`$1`, `$2`…); a run's `args` option replaces them.
    pub args: Vec<String>,
    /// The maps, in the order the header declares them.
    pub maps: Vec<AdhocMap>,
}

impl AdhocDef {
    /// The maps whose output is stored as values per stack or as series, in declared order.
    pub fn value_maps(&self) -> impl Iterator<Item = &AdhocMap> {
        self.maps
            .iter()
            .filter(|m| matches!(m.kind, MapKind::Stacks | MapKind::Series))
    }

    pub fn map(&self, name: &str) -> Option<&AdhocMap> {
        self.maps.iter().find(|m| m.name == name)
    }
}

/// One map of the script and where its output goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdhocMap {
    /// Without the `@`.
    pub name: String,
    pub kind: MapKind,
    /// What the map is keyed by, in the order of the script's `@map[k1, k2, …]`.
    pub keys: Vec<MapKey>,
    /// The value type its values are stored under (stacks and series).
    pub value: String,
    pub unit: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    Stacks,
    Histogram,
    Series,
    Scratch,
}

/// One key of a map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKey {
    Ustack,
    Kstack,
    /// Stored as the sample's `pid` (its process, comm and exe labels follow).
    Pid,
    Tid,
    Comm,
    /// Any other key: a label of this name.
    Label(String),
}

/// The header, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderDoc {
    name: Spanned<String>,
    owner: Spanned<String>,
    description: Option<String>,
    #[serde(default)]
    resources: Vec<Spanned<ResourceDoc>>,
    max_duration: Option<Spanned<String>>,
    max_output: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    maps: BTreeMap<Spanned<String>, Spanned<MapDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapDoc {
    kind: Spanned<String>,
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    value: Option<Spanned<String>>,
    unit: Option<String>,
}

/// The options every ad-hoc profiler takes.
pub const OPTIONS: &[&str] = &["args"];

/// Default ceilings.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_OUTPUT: u64 = 16 << 20;

/// The header's lines as TOML, every other line left empty: line and column numbers of the
/// result are the script's. `None` when the script has no `// baton:` line.
fn header_toml(script: &str) -> Option<String> {
    let mut out = String::with_capacity(script.len());
    let mut state = 0; // 0: before the marker, 1: in the header, 2: after it
    for line in script.split('\n') {
        let t = line.trim_start();
        match state {
            0 if t.trim_end() == "// baton:" => state = 1,
            1 if t.starts_with("//") => {
                let at = line.len() - t.len();
                out.push_str(&line[..at]);
                out.push_str("  ");
                out.push_str(&t[2..]);
            }
            1 => state = 2,
            _ => {}
        }
        out.push('\n');
    }
    (state > 0).then_some(out)
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase())
        && s.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
        && s.len() <= 64
}

fn valid_label(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase() || f == '_')
        && s.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
}

/// Labels a map key may not take: the ones every sample already has.
const RESERVED_LABELS: &[&str] = &[
    "host", "exe", "cgroup", "service", "run", "profiler", "time", "value",
];

/// Validates one `*.bt` file. Problems are pushed with the script's own lines.
pub(crate) fn validate_script(
    file: &SourceFile,
    builtin: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<AdhocDef> {
    let Some(toml_text) = header_toml(&file.text) else {
        problems.push(Problem {
            file: file.path.clone(),
            line: 1,
            col: 1,
            message: "an ad-hoc profiler needs a header: a `// baton:` line followed by `//` \
                      lines of TOML (name, owner, resources, max_duration, [maps.NAME])"
                .into(),
        });
        return None;
    };
    // Spans of the header TOML are positions in the script, line for line.
    let shadow = SourceFile {
        path: file.path.clone(),
        text: toml_text,
    };
    let mut cx = crate::validate::Ctx {
        file: &shadow,
        problems,
    };
    let doc: HeaderDoc = match toml::from_str(&shadow.text) {
        Ok(d) => d,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.at(
                span,
                format!(
                    "header: {}",
                    crate::validate::parse_error_message(e.message())
                ),
            );
            return None;
        }
    };
    let before = cx.problems.len();
    let name = doc.name.get_ref().clone();
    if !valid_name(&name) {
        cx.at(
            doc.name.span(),
            format!("bad name `{name}`: use lower-case letters, digits, `_` and `-`, starting with a letter"),
        );
    } else if builtin.contains(&name.as_str()) || name == "adhoc" {
        cx.at(
            doc.name.span(),
            format!("`{name}` is the name of a built-in profiler; pick another"),
        );
    }
    if doc.owner.get_ref().trim().is_empty() {
        cx.at(doc.owner.span(), "owner must not be empty");
    }
    let resources: Vec<ResourceSpec> = doc
        .resources
        .iter()
        .filter_map(|r| crate::validate::resource(&mut cx, r.get_ref()))
        .collect();
    let max_duration = match &doc.max_duration {
        Some(d) => cx
            .duration(d, "max_duration")
            .unwrap_or(DEFAULT_MAX_DURATION),
        None => DEFAULT_MAX_DURATION,
    };
    let max_output_bytes = match &doc.max_output {
        Some(s) => match baton_model::duration::parse_size(s.get_ref()) {
            Ok(n) if n >= 1024 => n,
            Ok(_) => {
                cx.at(s.span(), "max_output must be at least 1KiB");
                DEFAULT_MAX_OUTPUT
            }
            Err(e) => {
                cx.at(s.span(), format!("max_output: {e}"));
                DEFAULT_MAX_OUTPUT
            }
        },
        None => DEFAULT_MAX_OUTPUT,
    };
    let mut maps = Vec::new();
    for (mname, m) in &doc.maps {
        if let Some(map) = map_def(&mut cx, mname, m) {
            maps.push(map);
        }
    }
    let mut values_seen: BTreeMap<String, String> = BTreeMap::new();
    for m in &maps {
        if matches!(m.kind, MapKind::Stacks | MapKind::Series) {
            if let Some(other) = values_seen.insert(m.value.clone(), m.name.clone()) {
                cx.at(
                    doc.name.span(),
                    format!(
                        "maps @{other} and @{} store the same value `{}`; give one a `value` of its own",
                        m.name, m.value
                    ),
                );
            }
        }
    }
    if !maps.iter().any(|m| !matches!(m.kind, MapKind::Scratch)) {
        cx.at(
            doc.name.span(),
            "the header declares no map to store: add a [maps.NAME] of kind stacks, histogram or series",
        );
    }
    // Every map the script uses is declared.
    for (used, offset) in maps_used(&file.text) {
        if used.is_empty() {
            cx.at_text(
                &file.text,
                offset,
                "an unnamed map (`@`) cannot be declared; give it a name, e.g. `@samples`",
            );
        } else if !maps.iter().any(|m| m.name == used) {
            cx.at_text(
                &file.text,
                offset,
                format!(
                    "map @{used} is not declared in the header; add `// [maps.{used}]` with its kind (stacks, histogram, series or scratch)"
                ),
            );
        }
    }
    if cx.problems.len() > before {
        return None;
    }
    Some(AdhocDef {
        name,
        owner: doc.owner.get_ref().clone(),
        description: doc
            .description
            .clone()
            .unwrap_or_else(|| format!("ad-hoc bpftrace script {}", file.path.display())),
        file: file.path.clone(),
        script: file.text.clone(),
        resources,
        max_duration,
        max_output_bytes,
        args: doc.args,
        maps,
    })
}

fn map_def(
    cx: &mut crate::validate::Ctx<'_>,
    name: &Spanned<String>,
    m: &Spanned<MapDoc>,
) -> Option<AdhocMap> {
    let d = m.get_ref();
    let n = name.get_ref().trim_start_matches('@').to_string();
    if !valid_label(&n) {
        cx.at(
            name.span(),
            format!("bad map name `{n}`: bpftrace map names are letters, digits and `_`"),
        );
        return None;
    }
    let kind = match d.kind.get_ref().as_str() {
        "stacks" => MapKind::Stacks,
        "histogram" => MapKind::Histogram,
        "series" => MapKind::Series,
        "scratch" => MapKind::Scratch,
        other => {
            let hint = crate::validate::suggest(
                other,
                ["stacks", "histogram", "series", "scratch"].into_iter(),
            )
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
            cx.at(
                d.kind.span(),
                format!(
                    "unknown map kind `{other}` (use stacks, histogram, series or scratch){hint}"
                ),
            );
            return None;
        }
    };
    let mut keys = Vec::new();
    let mut ok = true;
    for k in &d.keys {
        let key = match k.get_ref().as_str() {
            "ustack" => MapKey::Ustack,
            "kstack" => MapKey::Kstack,
            "pid" => MapKey::Pid,
            "tid" => MapKey::Tid,
            "comm" => MapKey::Comm,
            l if valid_label(l) && !RESERVED_LABELS.contains(&l) => MapKey::Label(l.into()),
            l => {
                cx.at(
                    k.span(),
                    format!("bad key `{l}`: use ustack, kstack, pid, tid, comm, or a label name (lower-case letters, digits, `_`; not {})", RESERVED_LABELS.join(", ")),
                );
                ok = false;
                continue;
            }
        };
        if keys.contains(&key) {
            cx.at(k.span(), format!("key `{}` is listed twice", k.get_ref()));
            ok = false;
        }
        keys.push(key);
    }
    let has_stack = keys
        .iter()
        .any(|k| matches!(k, MapKey::Ustack | MapKey::Kstack));
    match kind {
        MapKind::Stacks if !has_stack => {
            cx.at(
                m.span(),
                format!("map @{n} is of kind stacks but has no ustack or kstack key"),
            );
            ok = false;
        }
        MapKind::Histogram | MapKind::Series if has_stack => {
            cx.at(
                m.span(),
                format!("map @{n}: only maps of kind stacks may be keyed by a stack"),
            );
            ok = false;
        }
        MapKind::Series if !keys.is_empty() => {
            cx.at(
                m.span(),
                format!("map @{n} is a series: a scalar such as `@{n} = count()`, with no keys"),
            );
            ok = false;
        }
        _ => {}
    }
    let value = match &d.value {
        Some(v) if valid_label(v.get_ref()) => v.get_ref().clone(),
        Some(v) => {
            cx.at(
                v.span(),
                format!(
                    "bad value name `{}`: lower-case letters, digits and `_`",
                    v.get_ref()
                ),
            );
            return None;
        }
        None => n.clone(),
    };
    ok.then(|| AdhocMap {
        name: n,
        kind,
        keys,
        value,
        unit: d.unit.clone().unwrap_or_else(|| "count".into()),
    })
}

/// The maps a script uses, as (name without `@`, byte offset of its first use), skipping
/// comments and strings.
pub fn maps_used(script: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for r in crate::infer::map_refs(script) {
        if !out.iter().any(|(n, _)| *n == r.name) {
            out.push((r.name, r.at));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<AdhocDef, Vec<String>> {
        let f = SourceFile {
            path: "adhoc/x.bt".into(),
            text: text.into(),
        };
        let mut p = Vec::new();
        validate_script(&f, &["cpu", "offcpu"], &mut p)
            .ok_or_else(|| p.iter().map(|p| p.to_string()).collect())
    }

    const GOOD: &str = "#!/usr/bin/env bpftrace\n// baton:\n// name = \"reads\"\n// owner = \"ada\"\n// resources = [{ name = \"tracepoint:syscalls:sys_exit_read\", shared = 2 }]\n// [maps.sizes]\n// kind = \"histogram\"\n// keys = [\"comm\"]\n// unit = \"bytes\"\n// [maps.n]\n// kind = \"series\"\n// [maps.st]\n// kind = \"stacks\"\n// keys = [\"ustack\", \"pid\", \"fd\"]\n// value = \"reads\"\ntracepoint:syscalls:sys_exit_read { @sizes[comm] = hist(args->ret); @n = count(); @st[ustack, pid, args->ret] = count(); printf(\"@nope\"); }\n";

    #[test]
    fn a_good_header_gives_its_maps() {
        let d = check(GOOD).expect("valid");
        assert_eq!(d.name, "reads");
        assert_eq!(d.resources[0].shared, Some(2));
        assert_eq!(d.max_duration, DEFAULT_MAX_DURATION);
        let st = d.map("st").expect("st");
        assert_eq!(
            st.keys,
            vec![MapKey::Ustack, MapKey::Pid, MapKey::Label("fd".into())]
        );
        assert_eq!(st.value, "reads");
        assert_eq!(
            d.value_maps().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["n", "st"]
        );
    }

    #[test]
    fn errors_point_at_the_script_line() {
        let bad = GOOD.replace("kind = \"series\"", "kind = \"serie\"");
        let e = check(&bad).expect_err("invalid");
        assert!(
            e.iter().any(
                |m| m.starts_with("adhoc/x.bt:11:11: unknown map kind `serie`")
                    && m.contains("did you mean `series`")
            ),
            "{e:?}"
        );
        let bad = GOOD.replace("@n = count();", "@n = count(); @m = count();");
        let e = check(&bad).expect_err("invalid");
        assert!(
            e.iter()
                .any(|m| m.starts_with("adhoc/x.bt:16:") && m.contains("map @m is not declared")),
            "{e:?}"
        );
        let bad = GOOD.replace("name = \"reads\"", "name = \"cpu\"");
        assert!(check(&bad).expect_err("invalid")[0].contains("built-in"));
        let bad = GOOD.replace("// owner = \"ada\"\n", "// ownr = \"ada\"\n");
        let e = check(&bad).expect_err("invalid");
        assert!(e[0].starts_with("adhoc/x.bt:"), "{e:?}");
        let e = check("profile:hz:99 { @x = count(); }\n").expect_err("no header");
        assert!(e[0].contains("needs a header"), "{e:?}");
    }

    #[test]
    fn maps_in_comments_and_strings_are_not_uses() {
        let used = maps_used("// @a\n/* @b */ x { printf(\"@c\\\" @d\"); @e[1] = 1; @ = 2; }");
        let names: Vec<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["e", ""]);
    }
}
