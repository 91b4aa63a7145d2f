//! Parsing `bpftrace -f json`: each printed map becomes the events and histograms of a window
//! (stacks into frames, composite keys into pid and labels), and the windows of one drain are
//! merged.

#[cfg(test)]
use std::collections::HashMap;

use baton_config::adhoc::{AdhocDef, AdhocMap, MapKey, MapKind};
use baton_model::{Frame, FrameKind};

use super::def::{intern, MARKER};
use crate::profiler::{Drained, Event, RawHistogram};

/// What the reader thread shares with the profiler.
#[derive(Default)]
pub(super) struct Shared {
    /// Windows complete so far.
    pub(super) ready: Drained,
    /// The window being printed.
    pub(super) pending: Drained,
    /// Output bytes read.
    pub(super) bytes: u64,
    pub(super) windows: u64,
    pub(super) attached: Option<u64>,
    pub(super) lost_events: u64,
    /// Why the output cannot be stored, or the output ceiling was passed.
    pub(super) error: Option<String>,
    /// The process closed its output (exited, or killed).
    pub(super) eof: bool,
}

/// One row per (thread, stack, labels) and one histogram per (name, key, process) over the
/// windows of one drain: bpftrace prints every second, a drain may span several prints.
pub(super) fn merge_windows(d: Drained) -> Drained {
    let mut out = Drained::default();
    let mut rows: std::collections::HashMap<String, usize> = Default::default();
    for e in d.events {
        let key = format!(
            "{}\0{}\0{}\0{:?}\0{:?}",
            e.pid,
            e.tid,
            e.comm,
            e.labels,
            e.frames
                .iter()
                .map(|f| (f.kind.as_u8(), f.address))
                .collect::<Vec<_>>()
        );
        match rows.get(&key) {
            Some(&i) => {
                let r: &mut Event = &mut out.events[i];
                r.count += e.count;
                for (a, b) in r.values.iter_mut().zip(&e.values) {
                    *a += b;
                }
            }
            None => {
                rows.insert(key, out.events.len());
                out.events.push(e);
            }
        }
    }
    let mut hists: std::collections::HashMap<(String, String, u32, String), usize> =
        Default::default();
    for h in d.histograms {
        let key = (h.name.to_string(), h.key.clone(), h.pid, h.comm.clone());
        match hists.get(&key) {
            Some(&i) => {
                let m = &mut out.histograms[i];
                m.le_buckets.extend(h.le_buckets);
            }
            None => {
                hists.insert(key, out.histograms.len());
                out.histograms.push(h);
            }
        }
    }
    // Buckets of one bound added together, in order.
    for h in &mut out.histograms {
        h.le_buckets.sort_by_key(|b| b.0);
        h.le_buckets.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 += b.1;
                true
            } else {
                false
            }
        });
    }
    out
}

/// One line of `bpftrace -f json` into the shared state.
pub(super) fn parse_line(
    line: &str,
    def: &AdhocDef,
    targets: &[u32],
    s: &mut Shared,
) -> Result<(), String> {
    if line.is_empty() {
        return Ok(());
    }
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        // Not JSON: a `system()` call or a stray print; it counts toward the output only.
        Err(_) => return Ok(()),
    };
    let ty = v["type"].as_str().unwrap_or("");
    let data = &v["data"];
    match ty {
        "attached_probes" => s.attached = Some(data["probes"].as_u64().unwrap_or(0)),
        "printf" if data.as_str().is_some_and(|t| t.trim_end() == MARKER) => {
            let p = std::mem::take(&mut s.pending);
            s.ready.events.extend(p.events);
            s.ready.histograms.extend(p.histograms);
            s.windows += 1;
        }
        "lost_events" => s.lost_events += data["events"].as_u64().unwrap_or(0),
        "map" | "hist" | "stats" => {
            let Some(obj) = data.as_object() else {
                return Ok(());
            };
            for (name, value) in obj {
                let bare = name.trim_start_matches('@');
                let Some(map) = def.map(bare) else {
                    return Err(format!(
                        "map {name} printed by {} is not declared in its header; add `// [maps.{bare}]` with its kind",
                        def.file.display()
                    ));
                };
                if map.kind == MapKind::Scratch {
                    continue;
                }
                let mut pending = std::mem::take(&mut s.pending);
                let r = map_output(def, map, ty, value, targets, &mut pending);
                s.pending = pending;
                r.map_err(|e| format!("map @{bare} of {}: {e}", def.file.display()))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One printed map into events or histograms.
fn map_output(
    def: &AdhocDef,
    map: &AdhocMap,
    ty: &str,
    value: &serde_json::Value,
    targets: &[u32],
    out: &mut Drained,
) -> Result<(), String> {
    let value_index = def.value_maps().position(|m| m.name == map.name);
    let nvalues = def.value_maps().count();
    match map.kind {
        MapKind::Series => {
            if ty == "hist" {
                return Err("declared a series but printed a histogram".into());
            }
            let n = match value {
                serde_json::Value::Number(n) => n.as_f64().unwrap_or(0.0),
                serde_json::Value::Object(o) if o.is_empty() => return Ok(()),
                serde_json::Value::Object(_) => {
                    return Err(
                        "declared a series (a scalar) but printed a keyed map; declare it as stacks or drop the keys"
                            .into(),
                    )
                }
                _ => return Err("its value is not a number".into()),
            };
            if n <= 0.0 {
                return Ok(());
            }
            let mut values = vec![0; nvalues];
            values[value_index.unwrap_or(0)] = n as u64;
            out.events.push(Event {
                comm: format!("@{}", map.name),
                count: 1,
                values,
                weight: 1.0,
                frames: vec![named_frame(&format!("@{}", map.name), "[bpftrace]")],
                keep_zero: 0,
                ..Default::default()
            });
        }
        MapKind::Stacks => {
            if ty == "hist" {
                return Err(
                    "declared stacks but printed a histogram; declare it as a histogram".into(),
                );
            }
            let obj = match value {
                serde_json::Value::Object(o) => o,
                _ => {
                    return Err(
                        "declared stacks but printed a scalar; declare it as a series".into(),
                    )
                }
            };
            for (key, v) in obj {
                let n = v
                    .as_f64()
                    .ok_or_else(|| "a stack's value is not a number (stats() and avg() maps are not supported; use count() or sum())".to_string())?;
                if n <= 0.0 {
                    continue;
                }
                let mut e = keyed_event(map, key)?;
                if !targets.is_empty() && e.pid != 0 && !targets.contains(&e.pid) {
                    continue;
                }
                e.values = vec![0; nvalues];
                e.values[value_index.unwrap_or(0)] = n as u64;
                // Events behind the row: the value itself for a count, else one row.
                e.count = if map.unit == "count" { n as u64 } else { 1 };
                e.weight = 1.0;
                out.events.push(e);
            }
        }
        MapKind::Histogram => {
            if ty != "hist" {
                return Err(format!(
                    "declared a histogram but printed a {ty}; use hist() or lhist()"
                ));
            }
            let name: &'static str = intern(&map.name);
            let unit: &'static str = intern(&map.unit);
            let mut push = |key: &str, buckets: &serde_json::Value| -> Result<(), String> {
                let list = buckets
                    .as_array()
                    .ok_or_else(|| "histogram buckets are not a list".to_string())?;
                let mut h = RawHistogram {
                    name,
                    unit,
                    key: String::new(),
                    pid: 0,
                    comm: String::new(),
                    buckets: Vec::new(),
                    le_buckets: Vec::new(),
                };
                if !key.is_empty() {
                    let e = keyed_event(map, key)?;
                    if !targets.is_empty() && e.pid != 0 && !targets.contains(&e.pid) {
                        return Ok(());
                    }
                    h.pid = e.pid;
                    h.comm = e.comm;
                    h.key = e
                        .labels
                        .iter()
                        .map(|(_, v)| v.as_str())
                        .collect::<Vec<_>>()
                        .join(",");
                    if h.key.is_empty() {
                        h.key = if h.comm.is_empty() {
                            h.pid.to_string()
                        } else {
                            h.comm.clone()
                        };
                    }
                }
                for b in list {
                    let count = b["count"].as_f64().unwrap_or(0.0);
                    if count <= 0.0 {
                        continue;
                    }
                    // [min, max]; the last bucket of an lhist has no max (values ≥ min), and a
                    // bucket of negative values has no min; they are kept at the ends.
                    let le = match (b["min"].as_i64(), b["max"].as_i64()) {
                        (_, Some(max)) if max >= 0 => max as u64,
                        (_, Some(_)) => 0,
                        (Some(_), None) => u64::MAX,
                        (None, None) => continue,
                    };
                    h.le_buckets.push((le, count));
                }
                if !h.le_buckets.is_empty() {
                    out.histograms.push(h);
                }
                Ok(())
            };
            match value {
                serde_json::Value::Array(_) => push("", value)?,
                serde_json::Value::Object(o) => {
                    if map.keys.is_empty() && !o.is_empty() {
                        return Err("printed a keyed histogram; declare its keys".into());
                    }
                    for (k, b) in o {
                        push(k, b)?;
                    }
                }
                _ => return Err("histogram output is neither a list nor keyed lists".into()),
            }
        }
        MapKind::Scratch => {}
    }
    Ok(())
}

/// A frame already named (bpftrace symbolizes its stacks itself). bpftrace gives no file
/// offset, and the store keys frames by (kind, module, build ID, address), so the address is a
/// hash of the name: one frame per distinct function.
fn named_frame(function: &str, module: &str) -> Frame {
    Frame {
        kind: FrameKind::User,
        function: Some(function.to_string()),
        module: module.to_string(),
        build_id: None,
        address: baton_model::batch::fnv1a(&[module.as_bytes(), function.as_bytes()]),
        file: None,
        line: None,
    }
}

/// Splits a printed key by the declared keys into an event's stacks, pid, comm and labels.
/// bpftrace joins the parts of a key with `,`; a stack part is `\n` + one indented line per
/// frame, each ending in `\n`, so it ends at the first `\n` followed by `,` or the end.
pub(super) fn keyed_event(map: &AdhocMap, key: &str) -> Result<Event, String> {
    let mut e = Event::default();
    let mut rest = key;
    let mut kernel: Vec<Frame> = Vec::new();
    let mut user: Vec<Frame> = Vec::new();
    let n = map.keys.len();
    if n == 0 {
        return Err(format!(
            "printed keys (e.g. {:?}) but the header declares none; add `keys = [...]`",
            key.chars().take(40).collect::<String>()
        ));
    }
    for (i, k) in map.keys.iter().enumerate() {
        let last = i + 1 == n;
        let part: &str = match k {
            MapKey::Ustack | MapKey::Kstack => {
                let end = stack_end(rest).ok_or_else(|| {
                    format!(
                        "key {:?} has no stack where the header declares key {} as one",
                        key.chars().take(60).collect::<String>(),
                        i + 1
                    )
                })?;
                let (p, r) = rest.split_at(end);
                rest = r.strip_prefix(',').unwrap_or(r);
                p
            }
            _ if last => std::mem::take(&mut rest),
            _ => {
                let end = rest.find(',').ok_or_else(|| {
                    format!(
                        "key {:?} has fewer parts than the {n} the header declares",
                        key.chars().take(60).collect::<String>()
                    )
                })?;
                let (p, r) = rest.split_at(end);
                rest = &r[1..];
                p
            }
        };
        match k {
            MapKey::Ustack => user = stack_frames(part, FrameKind::User),
            MapKey::Kstack => kernel = stack_frames(part, FrameKind::Kernel),
            MapKey::Pid => {
                e.pid = part
                    .trim()
                    .parse()
                    .map_err(|_| format!("pid key {part:?} is not a number"))?
            }
            MapKey::Tid => e.tid = part.trim().parse().unwrap_or(0),
            MapKey::Comm => e.comm = part.to_string(),
            MapKey::Label(l) => e.labels.push((intern(l), part.to_string())),
        }
    }
    e.frames = kernel;
    e.frames.extend(user);
    if e.tid == 0 {
        e.tid = e.pid;
    }
    Ok(e)
}

/// Where the stack at the start of `s` ends (after its last `\n`).
fn stack_end(s: &str) -> Option<usize> {
    if !s.starts_with('\n') {
        // An empty stack prints as nothing.
        return (s.is_empty() || s.starts_with(',')).then_some(0);
    }
    let b = s.as_bytes();
    (0..b.len())
        .find(|&i| b[i] == b'\n' && (i + 1 == b.len() || b[i + 1] == b','))
        .map(|i| i + 1)
}

/// The frames of a printed stack, leaf first: `symbol+offset`, a bare hex address, or perf's
/// `address symbol+offset (module)` form.
fn stack_frames(text: &str, kind: FrameKind) -> Vec<Frame> {
    let module_default = if kind == FrameKind::Kernel {
        baton_model::frame::KERNEL_MODULE
    } else {
        "[unknown]"
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (sym, module) = match l.rsplit_once(" (") {
                Some((head, m)) if m.ends_with(')') => {
                    let sym = head.split_once(' ').map(|(_, s)| s).unwrap_or(head);
                    (sym, m.trim_end_matches(')'))
                }
                _ => (l, module_default),
            };
            if let Some(hex) = sym.strip_prefix("0x") {
                let address = u64::from_str_radix(hex, 16).unwrap_or(0);
                return Frame {
                    kind,
                    function: None,
                    module: module.to_string(),
                    build_id: None,
                    address,
                    file: None,
                    line: None,
                };
            }
            let name = match sym.rsplit_once('+') {
                Some((n, off)) if off.chars().all(|c| c.is_ascii_digit()) => n,
                _ => sym,
            };
            let mut f = named_frame(&demangle(name), module);
            f.kind = kind;
            f.address =
                baton_model::batch::fnv1a(&[&[kind.as_u8()], module.as_bytes(), name.as_bytes()]);
            f
        })
        .collect()
}

/// Rust (legacy and v0) and C++ names as people read them.
pub(crate) fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name.as_bytes()) {
            if let Ok(s) = sym.demangle() {
                return s;
            }
        }
    }
    name.to_string()
}

/// The values a drained window adds up to, per value index.
#[cfg(test)]
pub(super) fn totals(d: &Drained) -> HashMap<usize, u64> {
    let mut t = HashMap::new();
    for e in &d.events {
        for (i, v) in e.values.iter().enumerate() {
            *t.entry(i).or_insert(0) += v;
        }
    }
    t
}
