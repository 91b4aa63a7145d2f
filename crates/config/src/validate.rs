//! Whole-tree validation: parse every file, merge, and check every value, collecting problems.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use baton_model::parse_duration;
use toml::Spanned;

use crate::schema::*;
use crate::{line_col, version_of, ConfigError, Problem, SourceFile};

/// Frequency bounds shared with the CPU profiler.
const MAX_FREQUENCY_HZ: i64 = 10_000;
const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".scope", ".slice", ".socket", ".timer", ".mount",
];
const TRIGGER_KINDS: &[&str] = &[
    "process_cpu",
    "host_cpu",
    "rss_growth",
    "heap_growth",
    "exec",
    "prometheus",
];

pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a SourceFile,
    pub(crate) problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    /// A problem at a byte offset of another text of the same file (a script around its header).
    pub(crate) fn at_text(&mut self, text: &str, offset: usize, message: impl Into<String>) {
        let (line, col) = line_col(text, offset);
        self.problems.push(Problem {
            file: self.file.path.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    pub(crate) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(&self.file.text, span.start);
        self.problems.push(Problem {
            file: self.file.path.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    pub(crate) fn duration(&mut self, v: &Spanned<String>, what: &str) -> Option<Duration> {
        match parse_duration(v.get_ref()) {
            Ok(d) if d > Duration::ZERO => Some(d),
            Ok(_) => {
                self.at(v.span(), format!("{what} must be more than zero"));
                None
            }
            Err(e) => {
                self.at(v.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    fn profiler(&mut self, v: &Spanned<String>, known: &[&str]) -> Option<String> {
        let name = v.get_ref();
        if known.contains(&name.as_str()) {
            return Some(name.clone());
        }
        let hint = suggest(name, known.iter().copied())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        self.at(
            v.span(),
            format!(
                "unknown profiler `{name}` (known: {}){hint}",
                known.join(", ")
            ),
        );
        None
    }

    fn frequency(&mut self, v: &Spanned<i64>) -> Option<u64> {
        let f = *v.get_ref();
        if (1..=MAX_FREQUENCY_HZ).contains(&f) {
            Some(f as u64)
        } else {
            self.at(
                v.span(),
                format!("frequency {f} is out of range 1..={MAX_FREQUENCY_HZ} Hz"),
            );
            None
        }
    }

    pub(crate) fn positive(&mut self, v: &Spanned<i64>, what: &str) -> Option<u64> {
        let n = *v.get_ref();
        if n >= 1 {
            Some(n as u64)
        } else {
            self.at(v.span(), format!("{what} must be at least 1, not {n}"));
            None
        }
    }
}

/// A bpftrace script (an ad-hoc profiler), not a TOML file.
fn is_script(f: &SourceFile) -> bool {
    f.path.extension().is_some_and(|x| x == "bt")
}

/// The closest candidate within a small edit distance, for "did you mean".
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Turns toml's "unknown field `x`, expected one of `a`, `b`" into a message with a hint.
pub(crate) fn parse_error_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim().to_string();
    let m = msg.replace('\n', " ");
    if let Some(rest) = m.split("unknown field `").nth(1) {
        let unknown = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest
            .split("expected ")
            .nth(1)
            .map(|e| e.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let hint = suggest(unknown, expected.iter().copied())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        let allowed = if expected.is_empty() {
            String::new()
        } else {
            format!(" (allowed: {})", expected.join(", "))
        };
        return format!("unknown key `{unknown}`{allowed}{hint}");
    }
    first
}

/// The option names of a profiler, when the caller knows them (None: not checked).
pub type OptionsOf<'a> = &'a dyn Fn(&str) -> Option<Vec<&'static str>>;

pub(crate) fn validate(
    files: &[SourceFile],
    known: &[&str],
    options_of: OptionsOf<'_>,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut config = Config {
        version: version_of(files),
        host: HostLimits::default(),
        tuner: TunerSettings::default(),
        profilers: BTreeMap::new(),
        services: BTreeMap::new(),
        adhoc: BTreeMap::new(),
        stack_schema: Default::default(),
        trace_url: None,
    };
    // Ad-hoc profilers first: rules and triggers of the TOML files may name them.
    let mut adhoc_at: BTreeMap<String, String> = BTreeMap::new();
    for file in files.iter().filter(|f| is_script(f)) {
        if let Some(def) = crate::adhoc::validate_script(file, known, &mut problems) {
            if let Some(first) = adhoc_at.get(&def.name) {
                problems.push(Problem {
                    file: file.path.clone(),
                    line: 1,
                    col: 1,
                    message: format!(
                        "ad-hoc profiler `{}` is defined twice; first in {first}",
                        def.name
                    ),
                });
                continue;
            }
            adhoc_at.insert(def.name.clone(), file.path.display().to_string());
            config.adhoc.insert(def.name.clone(), def);
        }
    }
    let with_adhoc: Vec<&str> = known
        .iter()
        .copied()
        .chain(config.adhoc.keys().map(String::as_str))
        .collect();
    let known: &[&str] = &with_adhoc;
    let adhoc_names: Vec<String> = config.adhoc.keys().cloned().collect();
    let adhoc_options = |name: &str| -> Option<Vec<&'static str>> {
        adhoc_names
            .iter()
            .any(|n| n == name)
            .then(|| crate::adhoc::OPTIONS.to_vec())
            .or_else(|| options_of(name))
    };
    let options_of: OptionsOf<'_> = &adhoc_options;
    // Where each unique thing was first defined, for duplicate errors.
    let mut host_at: Option<String> = None;
    let mut tuner_at: Option<String> = None;
    let mut profiler_at: BTreeMap<String, String> = BTreeMap::new();
    let mut service_at: BTreeMap<String, String> = BTreeMap::new();

    for file in files.iter().filter(|f| !is_script(f)) {
        let doc: FileDoc = match toml::from_str(&file.text) {
            Ok(d) => d,
            Err(e) => {
                let (line, col) = e
                    .span()
                    .map(|s| line_col(&file.text, s.start))
                    .unwrap_or((1, 1));
                problems.push(Problem {
                    file: file.path.clone(),
                    line,
                    col,
                    message: parse_error_message(e.message()),
                });
                continue;
            }
        };
        let mut cx = Ctx {
            file,
            problems: &mut problems,
        };
        let here = |span: Range<usize>| {
            let (l, c) = line_col(&file.text, span.start);
            format!("{}:{l}:{c}", file.path.display())
        };

        if let Some(h) = &doc.host {
            if let Some(first) = &host_at {
                cx.at(
                    h.span(),
                    format!("[host] is defined twice; first at {first}"),
                );
            } else {
                host_at = Some(here(h.span()));
                config.host = host_limits(&mut cx, h.get_ref(), known);
            }
        }
        if let Some(t) = &doc.tuner {
            if let Some(first) = &tuner_at {
                cx.at(
                    t.span(),
                    format!("[tuner] is defined twice; first at {first}"),
                );
            } else {
                tuner_at = Some(here(t.span()));
                if let Some(iv) = &t.get_ref().interval {
                    if let Some(d) = cx.duration(iv, "tuner interval") {
                        config.tuner.interval = d;
                    }
                }
                if let Some(v) = &t.get_ref().host_rows_per_hour {
                    if let Some(n) = cx.positive(v, "host_rows_per_hour") {
                        config.tuner.host_rows_per_hour = n;
                    }
                }
            }
        }
        for (name, p) in &doc.profilers {
            if let Some(first) = profiler_at.get(name.get_ref()) {
                cx.at(
                    name.span(),
                    format!(
                        "[profilers.{}] is defined twice; first at {first}",
                        name.get_ref()
                    ),
                );
                continue;
            }
            profiler_at.insert(name.get_ref().clone(), here(name.span()));
            if cx.profiler(name, known).is_none() {
                continue;
            }
            let o = profiler_override(&mut cx, name.get_ref(), p.get_ref(), options_of);
            config.profilers.insert(name.get_ref().clone(), o);
        }
        for (name, s) in &doc.services {
            if let Some(first) = service_at.get(name.get_ref()) {
                cx.at(
                    name.span(),
                    format!(
                        "[services.{}] is defined twice; first at {first}",
                        name.get_ref()
                    ),
                );
                continue;
            }
            service_at.insert(name.get_ref().clone(), here(name.span()));
            for r in &s.get_ref().stack_schema {
                if let Some(rule) = crate::stack_schema::rule(&mut cx, r, Some(name.get_ref())) {
                    config.stack_schema.rules.push(rule);
                }
            }
            if let Some(svc) = service(&mut cx, s.get_ref(), known, options_of) {
                config.services.insert(name.get_ref().clone(), svc);
            }
        }
        if let Some(ui) = &doc.ui {
            if let Some(t) = &ui.get_ref().trace_url {
                let url = t.get_ref();
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || !url.contains("{trace_id}")
                {
                    cx.at(
                        t.span(),
                        "trace_url: an http:// or https:// address with {trace_id} (and \
                         optionally {span_id}) in it",
                    );
                } else if config.trace_url.is_some() {
                    cx.at(t.span(), "[ui] trace_url is set twice");
                } else {
                    config.trace_url = Some(url.clone());
                }
            }
        }
        for r in &doc.stack_schema {
            if let Some(rule) = crate::stack_schema::rule(&mut cx, r, None) {
                config.stack_schema.rules.push(rule);
            }
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn host_limits(cx: &mut Ctx<'_>, h: &HostDoc, known: &[&str]) -> HostLimits {
    let mut out = HostLimits::default();
    if let Some(v) = &h.max_concurrent {
        if let Some(n) = cx.positive(v, "max_concurrent") {
            out.max_concurrent = n as u32;
        }
    }
    if let Some(v) = &h.overhead_budget_percent {
        let p = *v.get_ref();
        if p > 0.0 && p <= 100.0 {
            out.overhead_budget_percent = p;
        } else {
            cx.at(
                v.span(),
                format!("overhead_budget_percent must be in (0, 100], not {p}"),
            );
        }
    }
    if let Some(v) = &h.overhead_check_interval {
        if let Some(d) = cx.duration(v, "overhead_check_interval") {
            out.overhead_check_interval = d;
        }
    }
    if let Some(v) = &h.write_budget_rows_per_minute {
        if let Some(n) = cx.positive(v, "write_budget_rows_per_minute") {
            out.write_budget_rows_per_minute = n;
        }
    }
    for (name, g) in &h.concurrency_groups {
        let g = g.get_ref();
        let max = cx.positive(&g.max, "max").unwrap_or(1) as u32;
        let profilers: Vec<String> = g
            .profilers
            .iter()
            .filter_map(|p| cx.profiler(p, known))
            .collect();
        out.concurrency_groups
            .insert(name.get_ref().clone(), ConcurrencyGroup { max, profilers });
    }
    out
}

fn profiler_override(
    cx: &mut Ctx<'_>,
    name: &str,
    p: &ProfilerDoc,
    options_of: OptionsOf<'_>,
) -> ProfilerOverride {
    let mut o = ProfilerOverride {
        frequency: p.frequency.as_ref().and_then(|f| cx.frequency(f)),
        window: p.window.as_ref().and_then(|w| cx.duration(w, "window")),
        max_frequency: p.max_frequency.as_ref().and_then(|f| cx.frequency(f)),
        max_duration: p
            .max_duration
            .as_ref()
            .and_then(|d| cx.duration(d, "max_duration")),
        resources: p.resources.as_ref().map(|list| {
            list.iter()
                .filter_map(|r| resource(cx, r.get_ref()))
                .collect()
        }),
        options: BTreeMap::new(),
    };
    o.options = profiler_options(cx, name, p.options.as_ref(), options_of);
    if let (Some(f), Some(m), Some(span)) = (o.frequency, o.max_frequency, p.frequency.as_ref()) {
        if f > m {
            cx.at(
                span.span(),
                format!("frequency {f} is above this profiler's max_frequency {m}"),
            );
            o.frequency = Some(m);
        }
    }
    o
}

/// Profiler options as text, each checked against the profiler's option names where known.
fn profiler_options(
    cx: &mut Ctx<'_>,
    name: &str,
    options: Option<&BTreeMap<String, Spanned<toml::Value>>>,
    options_of: OptionsOf<'_>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let allowed = options_of(name);
    for (k, v) in options.into_iter().flatten() {
        if let Some(allowed) = &allowed {
            if !allowed.contains(&k.as_str()) {
                let hint = suggest(k, allowed.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                cx.at(
                    v.span(),
                    if allowed.is_empty() {
                        format!("profiler {name} takes no options (got `{k}`)")
                    } else {
                        format!(
                            "profiler {name} has no option `{k}` (its options: {}){hint}",
                            allowed.join(", ")
                        )
                    },
                );
                continue;
            }
        }
        let text = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                cx.at(
                    v.span(),
                    format!("option {k} must be a string, number or boolean"),
                );
                continue;
            }
        };
        out.insert(k.clone(), text);
    }
    out
}

/// Resource kinds a claim may name, and whether the kind takes a `:detail`.
const RESOURCE_KINDS: &[(&str, bool)] = &[
    ("pmu", false),
    ("tracepoint", true),
    ("kprobe", true),
    ("uprobe", true),
    ("gpu", false),
    // CUPTI's activity API, one subscriber per process: a kernel-timing profiler claims it
    // exclusively (docs/gpu.md).
    ("cupti", false),
];

pub(crate) fn resource(cx: &mut Ctx<'_>, r: &ResourceDoc) -> Option<ResourceSpec> {
    let name = r.name.get_ref();
    let (kind, detail) = match name.split_once(':') {
        Some((k, d)) => (k, Some(d)),
        None => (name.as_str(), None),
    };
    let known = RESOURCE_KINDS.iter().find(|(k, _)| *k == kind);
    let ok = match known {
        // `gpu` and `cupti` alone or `:N` (a device); the others need their detail.
        Some(("gpu" | "cupti", _)) => detail.is_none_or(|d| d.parse::<u32>().is_ok()),
        Some((_, true)) => detail.is_some_and(|d| !d.is_empty()),
        Some((_, false)) => detail.is_none(),
        None => false,
    };
    if !ok {
        let hint = suggest(kind, RESOURCE_KINDS.iter().map(|(k, _)| *k))
            .filter(|s| *s != kind)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        cx.at(
            r.name.span(),
            format!("bad resource `{name}`: use pmu, tracepoint:GROUP:NAME, kprobe:FUNC, uprobe:LIBRARY, gpu[:N] or cupti[:N]{hint}"),
        );
        return None;
    }
    let shared = match &r.shared {
        Some(n) => Some(cx.positive(n, "shared")? as u32),
        None => None,
    };
    Some(ResourceSpec {
        name: name.clone(),
        shared,
    })
}

fn selector(cx: &mut Ctx<'_>, s: &Spanned<SelectorDoc>) -> Option<Selector> {
    let d = s.get_ref();
    let mut ok = true;
    if d.cgroup.is_none() && d.unit.is_none() && d.comm.is_none() && d.exe.is_none() {
        cx.at(
            s.span(),
            "the selector matches nothing: give at least one of cgroup, unit, comm, exe",
        );
        return None;
    }
    if let Some(c) = &d.cgroup {
        if !c.get_ref().starts_with('/') {
            cx.at(
                c.span(),
                format!(
                    "bad selector cgroup `{}`: a cgroup path starts with `/`",
                    c.get_ref()
                ),
            );
            ok = false;
        }
    }
    if let Some(u) = &d.unit {
        if !UNIT_SUFFIXES.iter().any(|s| u.get_ref().ends_with(s)) {
            cx.at(
                u.span(),
                format!(
                    "bad selector unit `{}`: a systemd unit ends in one of {}",
                    u.get_ref(),
                    UNIT_SUFFIXES.join(", ")
                ),
            );
            ok = false;
        }
    }
    if let Some(c) = &d.comm {
        let n = c.get_ref().len();
        if n == 0 || n > 15 {
            cx.at(
                c.span(),
                format!(
                    "bad selector comm `{}`: a process name is 1 to 15 bytes",
                    c.get_ref()
                ),
            );
            ok = false;
        }
    }
    if let Some(e) = &d.exe {
        if !e.get_ref().starts_with('/') {
            cx.at(
                e.span(),
                format!("bad selector exe `{}`: use an absolute path", e.get_ref()),
            );
            ok = false;
        }
    }
    ok.then(|| Selector {
        cgroup: d.cgroup.as_ref().map(|v| v.get_ref().clone()),
        unit: d.unit.as_ref().map(|v| v.get_ref().clone()),
        comm: d.comm.as_ref().map(|v| v.get_ref().clone()),
        exe: d.exe.as_ref().map(|v| v.get_ref().clone()),
    })
}

/// A continuous rule's `fdo` and `fdo_every`: `Some(None)` when it asks for none, `None` when
/// what it asks is wrong (the problem is recorded).
fn fdo_refresh(cx: &mut Ctx<'_>, c: &ContinuousDoc) -> Option<Option<FdoRefresh>> {
    let Some(w) = &c.fdo else {
        if let Some(e) = &c.fdo_every {
            cx.at(
                e.span(),
                "fdo_every needs fdo (the history a profile covers, e.g. \"24h\")",
            );
            return None;
        }
        return Some(None);
    };
    if c.profiler.get_ref() != "cpu" {
        cx.at(
            w.span(),
            "fdo profiles are built from cpu samples: put fdo on a cpu rule",
        );
        return None;
    }
    let window = cx.duration(w, "fdo")?;
    let every = match &c.fdo_every {
        Some(e) => cx.duration(e, "fdo_every")?,
        None => Duration::from_secs(900),
    };
    Some(Some(FdoRefresh { window, every }))
}

fn service(
    cx: &mut Ctx<'_>,
    s: &ServiceDoc,
    known: &[&str],
    options_of: OptionsOf<'_>,
) -> Option<Service> {
    let sel = selector(cx, &s.selector);
    let mut continuous = Vec::new();
    for c in &s.continuous {
        let c = c.get_ref();
        let profiler = cx.profiler(&c.profiler, known);
        let target = cx.positive(&c.target_samples_per_hour, "target_samples_per_hour");
        let duration = cx.duration(&c.duration, "duration");
        let frequency = c.frequency.as_ref().map(|f| cx.frequency(f));
        let fdo = fdo_refresh(cx, c);
        if let (Some(profiler), Some(target), Some(duration), Some(fdo)) =
            (profiler, target, duration, fdo)
        {
            continuous.push(ContinuousRule {
                profiler,
                target_samples_per_hour: target,
                duration,
                frequency: frequency.flatten(),
                fdo,
            });
        }
    }
    let mut triggers = Vec::new();
    for t in &s.triggers {
        if let Some(rule) = trigger(cx, t.get_ref(), known, options_of) {
            triggers.push(rule);
        }
    }
    let budget = s
        .write_budget_rows_per_minute
        .as_ref()
        .and_then(|v| cx.positive(v, "write_budget_rows_per_minute"));
    let mut labels = BTreeMap::new();
    for (k, v) in &s.labels {
        if let Err(e) = label_key(k.get_ref()) {
            cx.at(k.span(), e);
        } else {
            labels.insert(k.get_ref().clone(), v.clone());
        }
    }
    Some(Service {
        selector: sel?,
        labels,
        continuous,
        triggers,
        write_budget_rows_per_minute: budget,
    })
}

/// Checks a service label's or a tag's name: it is stored with each sample or filtered like
/// one, so it must be a storable label name (lower-case letters, digits and `_`, not starting
/// with a digit) and not one of the columns.
pub(crate) fn label_key(k: &str) -> Result<(), String> {
    let ok = k.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(format!(
            "label `{k}`: use lower-case letters, digits and `_`, starting with a letter"
        ));
    }
    if baton_model::registry::BATON_LABELS.contains(&k) {
        return Err(format!(
            "label `{k}` is one Baton sets itself; choose another name"
        ));
    }
    Ok(())
}

fn trigger(
    cx: &mut Ctx<'_>,
    t: &TriggerDoc,
    known: &[&str],
    options_of: OptionsOf<'_>,
) -> Option<TriggerRule> {
    let kind = t.kind.get_ref().as_str();
    let profiler = cx.profiler(&t.profiler, known);
    let duration = cx.duration(&t.duration, "duration");
    let cooldown = cx.duration(&t.cooldown, "cooldown");
    let max_per_hour = cx.positive(&t.max_per_hour, "max_per_hour");
    let options = match (&profiler, &t.options) {
        (Some(p), Some(o)) => profiler_options(cx, p, Some(o), options_of),
        _ => BTreeMap::new(),
    };
    // Which optional fields each kind needs, and which it may have; any other optional field
    // is a mistake.
    let may: &[&str] = match kind {
        "rss_growth" | "heap_growth" => &["for"],
        _ => &[],
    };
    let needs: &[&str] = match kind {
        "process_cpu" => &["above_percent", "for"],
        "host_cpu" => &["above_percent"],
        "rss_growth" | "heap_growth" => &["bytes_per_second"],
        "exec" => &["pattern"],
        "prometheus" => &["url", "metric", "above"],
        other => {
            let hint = suggest(other, TRIGGER_KINDS.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            cx.at(
                t.kind.span(),
                format!(
                    "unknown trigger kind `{other}` (known: {}){hint}",
                    TRIGGER_KINDS.join(", ")
                ),
            );
            return None;
        }
    };
    let present: [(&str, Option<Range<usize>>); 7] = [
        ("above_percent", t.above_percent.as_ref().map(|v| v.span())),
        ("for", t.for_.as_ref().map(|v| v.span())),
        (
            "bytes_per_second",
            t.bytes_per_second.as_ref().map(|v| v.span()),
        ),
        ("pattern", t.pattern.as_ref().map(|v| v.span())),
        ("url", t.url.as_ref().map(|v| v.span())),
        ("metric", t.metric.as_ref().map(|v| v.span())),
        ("above", t.above.as_ref().map(|v| v.span())),
    ];
    let mut ok = true;
    for (name, span) in &present {
        match (needs.contains(name), span) {
            (true, None) => {
                cx.at(t.kind.span(), format!("a `{kind}` trigger needs `{name}`"));
                ok = false;
            }
            (false, Some(span)) if !may.contains(name) => {
                cx.at(
                    span.clone(),
                    format!("`{name}` does not apply to a `{kind}` trigger"),
                );
                ok = false;
            }
            _ => {}
        }
    }
    let pct = |cx: &mut Ctx<'_>, v: &Option<Spanned<f64>>| -> Option<f64> {
        let v = v.as_ref()?;
        let p = *v.get_ref();
        if p > 0.0 && p <= 100.0 * 1024.0 {
            Some(p)
        } else {
            cx.at(
                v.span(),
                format!("above_percent must be more than 0, not {p}"),
            );
            None
        }
    };
    if !ok {
        return None;
    }
    let condition = match kind {
        "process_cpu" => TriggerCondition::ProcessCpu {
            above_percent: pct(cx, &t.above_percent)?,
            for_: t.for_.as_ref().and_then(|d| cx.duration(d, "for"))?,
        },
        "host_cpu" => TriggerCondition::HostCpu {
            above_percent: pct(cx, &t.above_percent)?,
        },
        "rss_growth" | "heap_growth" => {
            let bytes_per_second = t
                .bytes_per_second
                .as_ref()
                .and_then(|v| cx.positive(v, "bytes_per_second"));
            let for_ = match &t.for_ {
                Some(d) => Some(cx.duration(d, "for")?),
                None => None,
            };
            let bytes_per_second = bytes_per_second?;
            if kind == "rss_growth" {
                TriggerCondition::RssGrowth {
                    bytes_per_second,
                    for_,
                }
            } else {
                TriggerCondition::HeapGrowth {
                    bytes_per_second,
                    for_,
                }
            }
        }
        "exec" => TriggerCondition::Exec {
            pattern: t.pattern.as_ref()?.get_ref().clone(),
        },
        _ => {
            let url = t.url.as_ref()?;
            if !url.get_ref().starts_with("http://") {
                cx.at(
                    url.span(),
                    format!(
                        "url `{}` must start with http:// (scraping over TLS is not supported yet)",
                        url.get_ref()
                    ),
                );
                return None;
            }
            let metric = t.metric.as_ref()?;
            if let Err(why) = crate::MetricSelector::parse(metric.get_ref()) {
                cx.at(
                    metric.span(),
                    format!("bad metric `{}`: {why}", metric.get_ref()),
                );
                return None;
            }
            TriggerCondition::Prometheus {
                url: url.get_ref().clone(),
                metric: metric.get_ref().clone(),
                above: *t.above.as_ref()?.get_ref(),
            }
        }
    };
    let frequency = match &t.frequency {
        Some(f) => Some(cx.frequency(f)?),
        None => None,
    };
    Some(TriggerRule {
        frequency,
        options,
        condition,
        profiler: profiler?,
        duration: duration?,
        cooldown: cooldown?,
        max_per_hour: max_per_hour? as u32,
    })
}
