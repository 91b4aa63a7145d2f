//! The ingest wire format: a [`Batch`] as a gzip pprof file, and any pprof file as a `Batch`.
//!
//! Agents ship batches as pprof so that one endpoint takes Baton's own data and pprof from any
//! other producer (Go's `net/http/pprof`, `go tool pprof -proto`, …). What pprof cannot say on
//! its own travels in it without breaking other readers:
//! - a sample's weight (when not 1) is the string label `baton_weight`;
//! - the profiler's name, the batch's histograms and its timeline spans are comments
//!   (`baton-profiler:NAME`, `baton-histograms:JSON`, `baton-spans:JSON`, the spans as columns,
//!   each naming its sample by its index in the decoded batch);
//! - a native frame the agent left unsymbolized is a location with no line: its mapping's build
//!   ID plus the file offset is what the server's symbolizer resolves later.

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use crate::batch::{Batch, Span, SpanKind};
use crate::export::pprof::{build_placed, decode_within, DecodeError, PbProfile};
use crate::frame::{Frame, FrameKind, KERNEL_MODULE};
use crate::hist::Histogram;
use crate::profile::{Labels, Profile, StackSample, ValueType};

/// The label that carries a sample's weight when it is not 1.
pub const WEIGHT_LABEL: &str = "baton_weight";
const PROFILER_COMMENT: &str = "baton-profiler:";
const HISTOGRAMS_COMMENT: &str = "baton-histograms:";
const SPANS_COMMENT: &str = "baton-spans:";

/// A batch's spans as columns: kinds, starts (the first absolute, then deltas), durations, pids,
/// tids, sample indexes in the decoded batch (-1: none) and labels.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SpanColumns {
    k: Vec<String>,
    s: Vec<i64>,
    d: Vec<i64>,
    p: Vec<u32>,
    t: Vec<u32>,
    i: Vec<i64>,
    l: Vec<String>,
}

impl SpanColumns {
    /// `decoded[k]`: where batch sample k will be after decoding, if it survives (a value that
    /// rounds to 0 does not).
    fn encode(spans: &[Span], decoded: &[Option<usize>]) -> SpanColumns {
        let mut c = SpanColumns::default();
        let mut prev = 0;
        for sp in spans {
            c.k.push(sp.kind.name().to_string());
            c.s.push(sp.start_us - prev);
            prev = sp.start_us;
            c.d.push(sp.dur_us);
            c.p.push(sp.pid);
            c.t.push(sp.tid);
            let at = sp
                .sample
                .and_then(|k| decoded.get(k as usize).copied().flatten());
            c.i.push(at.map_or(-1, |i| i as i64));
            c.l.push(sp.label.clone());
        }
        c
    }

    fn decode(mut self, samples: usize) -> Result<Vec<Span>, String> {
        let n = self.k.len();
        if [
            self.s.len(),
            self.d.len(),
            self.p.len(),
            self.t.len(),
            self.i.len(),
            self.l.len(),
        ]
        .iter()
        .any(|&m| m != n)
        {
            return Err("span columns differ in length".into());
        }
        let mut out = Vec::with_capacity(n);
        let mut start = 0i64;
        for j in 0..n {
            let kind = SpanKind::parse(&self.k[j])
                .ok_or_else(|| format!("span {j} has an unknown kind {:?}", self.k[j]))?;
            start = start.saturating_add(self.s[j]);
            let sample = match self.i[j] {
                -1 => None,
                i if i >= 0 && (i as usize) < samples => Some(i as u32),
                i => return Err(format!("span {j} names sample {i} of {samples}")),
            };
            if self.d[j] < 0 {
                return Err(format!("span {j} has a negative duration"));
            }
            out.push(Span {
                kind,
                pid: self.p[j],
                tid: self.t[j],
                start_us: start,
                dur_us: self.d[j],
                sample,
                label: std::mem::take(&mut self.l[j]),
            });
        }
        Ok(out)
    }
}

/// The profiler name given to pprof that names none.
pub const FOREIGN_PROFILER: &str = "pprof";

/// Why an uploaded payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("malformed pprof: {0}")]
    Malformed(String),
}

impl WireError {
    /// Whether the input was refused for its size rather than its form (HTTP 413, not 400).
    pub fn too_large(&self) -> bool {
        matches!(self, WireError::Decode(d) if d.too_large())
    }
}

/// What an ingest's query string says: `profiler=NAME&batch_id=ID&LABEL=VALUE…`.
#[derive(Debug, Default, PartialEq)]
pub struct IngestQuery {
    pub profiler: Option<String>,
    pub batch_id: Option<String>,
    pub labels: Labels,
}

/// The most labels an ingest's query string may set, and the longest value.
pub const MAX_QUERY_LABELS: usize = 64;
pub const MAX_LABEL_VALUE: usize = 1024;

/// Reads an ingest's query string (a batch id in the query wins over `header_batch_id`).
/// Label names are 1 to 64 lower-case letters, digits and `_`; at most [`MAX_QUERY_LABELS`]
/// labels, each value at most [`MAX_LABEL_VALUE`] bytes; a batch id is 1 to 200 characters.
pub fn parse_ingest_query(q: &str, header_batch_id: Option<String>) -> Result<IngestQuery, String> {
    let mut out = IngestQuery {
        batch_id: header_batch_id,
        ..IngestQuery::default()
    };
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "profiler" => out.profiler = Some(v.to_string()),
            "batch_id" => out.batch_id = Some(v.to_string()),
            key => {
                let ok = !key.is_empty()
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(format!(
                        "bad label name {key:?}: use lower-case letters, digits and _"
                    ));
                }
                if v.len() > MAX_LABEL_VALUE {
                    return Err(format!(
                        "the value of {key} is over {MAX_LABEL_VALUE} bytes"
                    ));
                }
                out.labels.insert(key.to_string(), v.to_string());
                if out.labels.len() > MAX_QUERY_LABELS {
                    return Err(format!("more than {MAX_QUERY_LABELS} labels in the query"));
                }
            }
        }
    }
    if out
        .batch_id
        .as_ref()
        .is_some_and(|b| b.is_empty() || b.len() > 200)
    {
        return Err("batch_id must be 1 to 200 characters".into());
    }
    Ok(out)
}

/// Encodes a batch as gzip pprof, losing nothing the store keeps.
pub fn encode_batch(b: &Batch) -> Vec<u8> {
    let samples = b
        .samples
        .iter()
        .map(|s| {
            let mut s = s.clone();
            if s.weight != 1.0 {
                s.labels
                    .insert(WEIGHT_LABEL.into(), format!("{}", s.weight));
            }
            s.weight = 1.0;
            s
        })
        .collect();
    let profile = Profile {
        value_type: b.value_type.clone(),
        more_value_types: b.more_value_types.clone(),
        period_ns: None,
        event: None,
        start_unix_ns: b.ts_ms.saturating_mul(1_000_000),
        duration_ns: 0,
        samples,
    };
    let (mut pb, placed) = build_placed(&profile, true);
    let comment = |pb: &mut PbProfile, text: String| {
        pb.comment.push(pb.string_table.len() as i64);
        pb.string_table.push(text);
    };
    comment(&mut pb, format!("{PROFILER_COMMENT}{}", b.profiler));
    if !b.histograms.is_empty() {
        let json = serde_json::to_string(&b.histograms).unwrap_or_default();
        comment(&mut pb, format!("{HISTOGRAMS_COMMENT}{json}"));
    }
    if !b.spans.is_empty() {
        // Decoding makes one sample per non-zero value of each pprof sample, in order.
        let mut at: HashMap<(usize, usize), usize> = HashMap::new();
        for (p, smp) in pb.sample.iter().enumerate() {
            for (slot, &v) in smp.value.iter().enumerate() {
                if v != 0 {
                    let next = at.len();
                    at.insert((p, slot), next);
                }
            }
        }
        let decoded: Vec<Option<usize>> = placed.iter().map(|k| at.get(k).copied()).collect();
        let cols = SpanColumns::encode(&b.spans, &decoded);
        let json = serde_json::to_string(&cols).unwrap_or_default();
        comment(&mut pb, format!("{SPANS_COMMENT}{json}"));
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&pb.encode_to_vec());
    gz.finish().unwrap_or_default()
}

/// The heap profiler's value names, in its order, with the names Go's runtime (and `pprof` for
/// gperftools heap profiles) gives the same values.
const HEAP_VALUES: &[(&str, &str)] = &[
    ("alloc_bytes", "alloc_space"),
    ("alloc_count", "alloc_objects"),
    ("live_bytes", "inuse_space"),
    ("live_count", "inuse_objects"),
];

/// The profiler a heap profile from another producer is stored under, so that its values and
/// the `malloc` profiler's are queried alike.
pub const HEAP_PROFILER: &str = "malloc";

/// For a heap profile (every sample type one of Go's `alloc_space`, `alloc_objects`,
/// `inuse_space`, `inuse_objects`): its types renamed to the heap profiler's `alloc_bytes`,
/// `alloc_count`, `live_bytes`, `live_count`, in that order, and the value index each pprof
/// slot moves to. `None` for any other profile.
fn heap_types(types: &[ValueType]) -> Option<(Vec<ValueType>, Vec<u8>)> {
    let ours = |t: &ValueType| HEAP_VALUES.iter().position(|(_, go)| *go == t.kind);
    let mut at: Vec<usize> = types.iter().map(ours).collect::<Option<_>>()?;
    let mut sorted = at.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != at.len() {
        return None;
    }
    let renamed = sorted
        .iter()
        .map(|&i| ValueType::new(HEAP_VALUES[i].0, if i % 2 == 0 { "bytes" } else { "count" }))
        .collect();
    for slot in &mut at {
        *slot = sorted.iter().position(|i| i == slot).unwrap_or(0);
    }
    Some((renamed, at.into_iter().map(|i| i as u8).collect()))
}

/// Decodes pprof (gzip or not) into a batch. `profiler` (from the request) wins over the one
/// the file names, else [`HEAP_PROFILER`] for a heap profile, else [`FOREIGN_PROFILER`];
/// `labels` are set on every sample and histogram, over what the file says. `now_ms` stamps a
/// file that carries no time. A heap profile's values (Go's `inuse_space`…) get the heap
/// profiler's names (`live_bytes`…), whatever profiler it is stored under.
pub fn decode_batch(
    bytes: &[u8],
    profiler: Option<&str>,
    labels: &Labels,
    now_ms: i64,
) -> Result<Batch, WireError> {
    decode_batch_within(
        bytes,
        profiler,
        labels,
        now_ms,
        &crate::limits::Limits::default(),
    )
}

/// [`decode_batch`] of an untrusted body, within `limits` (checked before decoding).
pub fn decode_batch_within(
    bytes: &[u8],
    profiler: Option<&str>,
    labels: &Labels,
    now_ms: i64,
    limits: &crate::limits::Limits,
) -> Result<Batch, WireError> {
    let pb = decode_within(bytes, limits)?;
    let bad = |m: String| WireError::Malformed(m);
    let strings = &pb.string_table;
    if strings.first().is_some_and(|s| !s.is_empty()) {
        return Err(bad("string_table[0] must be empty".into()));
    }
    let s = |i: i64| -> Result<&str, WireError> {
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i))
            .map(String::as_str)
            .ok_or_else(|| bad(format!("string index {i} is out of range")))
    };
    let mut named = None;
    let mut histograms: Vec<Histogram> = Vec::new();
    let mut spans: Option<SpanColumns> = None;
    for &c in &pb.comment {
        let text = s(c)?;
        if let Some(p) = text.strip_prefix(PROFILER_COMMENT) {
            named = Some(p.to_string());
        } else if let Some(j) = text.strip_prefix(HISTOGRAMS_COMMENT) {
            histograms = serde_json::from_str(j).map_err(|e| bad(format!("histograms: {e}")))?;
        } else if let Some(j) = text.strip_prefix(SPANS_COMMENT) {
            spans = Some(serde_json::from_str(j).map_err(|e| bad(format!("spans: {e}")))?);
        }
    }
    let types = pb
        .sample_type
        .iter()
        .map(|t| Ok(ValueType::new(s(t.r#type)?, s(t.unit)?)))
        .collect::<Result<Vec<_>, WireError>>()?;
    let heap = heap_types(&types);
    let profiler = profiler.map(str::to_string).or(named).unwrap_or_else(|| {
        if heap.is_some() {
            HEAP_PROFILER
        } else {
            FOREIGN_PROFILER
        }
        .into()
    });
    if profiler.is_empty() || profiler.len() > 64 {
        return Err(bad("the profiler name must be 1 to 64 characters".into()));
    }
    let (types, slot_index) = match heap {
        Some((renamed, at)) => (renamed, at),
        None => {
            let n = types.len().min(256);
            (types, (0..n).map(|i| i as u8).collect())
        }
    };
    if types.is_empty() {
        return Err(bad("no sample_type".into()));
    }
    if types.len() > 255 {
        return Err(bad("more than 255 sample types".into()));
    }
    let ts_ms = if pb.time_nanos > 0 {
        pb.time_nanos.saturating_add(pb.duration_nanos.max(0)) / 1_000_000
    } else {
        now_ms
    };
    let mut batch = Batch::new(&profiler, types.clone(), ts_ms);

    let mappings: HashMap<u64, &crate::export::pprof::PbMapping> =
        pb.mapping.iter().map(|m| (m.id, m)).collect();
    let functions: HashMap<u64, &crate::export::pprof::PbFunction> =
        pb.function.iter().map(|f| (f.id, f)).collect();
    let mut locations: HashMap<u64, Vec<Frame>> = HashMap::with_capacity(pb.location.len());
    for loc in &pb.location {
        let (module, build_id, start, offset, limit) = match mappings.get(&loc.mapping_id) {
            Some(m) => (
                s(m.filename)?.to_string(),
                Some(s(m.build_id)?.to_string()).filter(|b| !b.is_empty()),
                m.memory_start,
                m.file_offset,
                m.memory_limit,
            ),
            None if loc.mapping_id == 0 => ("[unknown]".to_string(), None, 0, 0, 0),
            None => {
                return Err(bad(format!(
                    "location {} has no mapping {}",
                    loc.id, loc.mapping_id
                )))
            }
        };
        let kind = if module == KERNEL_MODULE {
            FrameKind::Kernel
        } else if module == "[jit]" {
            FrameKind::Jit
        } else if crate::frame::INTERPRETED_MODULES.contains(&module.as_str()) {
            FrameKind::Interpreted
        } else {
            FrameKind::User
        };
        // User frames are keyed by file offset; Baton's own mappings start at 0 already.
        let address = if kind == FrameKind::User && start > 0 && loc.address >= start {
            if limit > start && loc.address >= limit {
                return Err(bad(format!("location {} lies outside its mapping", loc.id)));
            }
            loc.address - start + offset
        } else {
            loc.address
        };
        let mut frames = Vec::with_capacity(loc.line.len().max(1));
        let n = loc.line.len();
        for (i, line) in loc.line.iter().enumerate() {
            let f = functions.get(&line.function_id).ok_or_else(|| {
                bad(format!(
                    "location {} names no function {}",
                    loc.id, line.function_id
                ))
            })?;
            let name = s(f.name)?;
            // Baton's own exports name an unresolved frame `[unknown] module+0xoff`: keep it
            // unresolved so the symbolizer can still name it.
            let function =
                (!name.is_empty() && !name.starts_with("[unknown]")).then(|| name.to_string());
            let file = Some(s(f.filename)?.to_string()).filter(|f| !f.is_empty());
            frames.push(Frame {
                kind: if i + 1 < n { FrameKind::Inlined } else { kind },
                function,
                module: module.clone(),
                build_id: build_id.clone(),
                address,
                file,
                line: u32::try_from(line.line).ok().filter(|l| *l > 0),
            });
        }
        if frames.is_empty() {
            frames.push(Frame {
                kind,
                function: None,
                module,
                build_id,
                address,
                file: None,
                line: None,
            });
        }
        locations.insert(loc.id, frames);
    }

    for (n, sample) in pb.sample.iter().enumerate() {
        if sample.value.len() != types.len() {
            return Err(bad(format!(
                "sample {n} has {} values for {} sample types",
                sample.value.len(),
                types.len()
            )));
        }
        let mut stack = Vec::with_capacity(sample.location_id.len());
        for id in &sample.location_id {
            let frames = locations
                .get(id)
                .ok_or_else(|| bad(format!("sample {n} names no location {id}")))?;
            stack.extend(frames.iter().cloned());
        }
        let mut sl = Labels::new();
        let mut weight = 1.0;
        for l in &sample.label {
            let key = s(l.key)?;
            let value = if l.str != 0 {
                s(l.str)?.to_string()
            } else {
                l.num.to_string()
            };
            if key == WEIGHT_LABEL {
                weight = value
                    .parse::<f64>()
                    .ok()
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .ok_or_else(|| bad(format!("sample {n} has a bad weight {value:?}")))?;
            } else {
                sl.insert(key.to_string(), value);
            }
        }
        for (k, v) in labels {
            sl.insert(k.clone(), v.clone());
        }
        for (i, &v) in sample.value.iter().enumerate() {
            if v == 0 {
                continue;
            }
            batch.samples.push(StackSample {
                stack: stack.clone(),
                labels: sl.clone(),
                value: v,
                weight,
                value_index: slot_index[i],
            });
        }
    }
    for h in &mut histograms {
        for (k, v) in labels {
            h.labels.insert(k.clone(), v.clone());
        }
    }
    batch.histograms = histograms;
    if let Some(cols) = spans {
        batch.spans = cols
            .decode(batch.samples.len())
            .map_err(|e| bad(format!("spans: {e}")))?;
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::pprof::decode;

    fn frame(kind: FrameKind, function: Option<&str>, module: &str, address: u64) -> Frame {
        Frame {
            kind,
            function: function.map(str::to_string),
            module: module.into(),
            build_id: (kind == FrameKind::User || kind == FrameKind::Inlined)
                .then(|| "00ff".to_string()),
            address,
            file: function.map(|_| "a.c".to_string()),
            line: function.map(|_| 7),
        }
    }

    #[test]
    fn go_heap_values_get_the_heap_profilers_names_and_order() {
        let go = [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space",
        ];
        let types: Vec<ValueType> = go
            .iter()
            .map(|k| {
                ValueType::new(
                    k,
                    if k.ends_with("objects") {
                        "count"
                    } else {
                        "bytes"
                    },
                )
            })
            .collect();
        let mut b = Batch::new("go-heap", types, 5_000);
        for (i, v) in [3, 4096, 1, 1024].into_iter().enumerate() {
            b.samples.push(StackSample {
                stack: vec![frame(FrameKind::User, Some("leaky"), "/bin/go", 16)],
                labels: Labels::new(),
                value: v,
                weight: 1.0,
                value_index: i as u8,
            });
        }
        let got = decode_batch(&encode_batch(&b), None, &Labels::new(), 0).expect("decode");
        assert_eq!(got.profiler, "go-heap", "the file's name is kept");
        let names: Vec<&str> = std::iter::once(&got.value_type)
            .chain(&got.more_value_types)
            .map(|t| t.kind.as_str())
            .collect();
        assert_eq!(
            names,
            ["alloc_bytes", "alloc_count", "live_bytes", "live_count"]
        );
        let by_index: Vec<(u8, i64)> = got
            .samples
            .iter()
            .map(|s| (s.value_index, s.value))
            .collect();
        assert_eq!(by_index, [(1, 3), (0, 4096), (3, 1), (2, 1024)]);
        // Only in-use values (a gperftools heap profile through pprof).
        let (t, at) = heap_types(&[
            ValueType::new("inuse_objects", "count"),
            ValueType::new("inuse_space", "bytes"),
        ])
        .expect("a heap profile");
        assert_eq!(
            (t[0].kind.as_str(), t[1].kind.as_str()),
            ("live_bytes", "live_count")
        );
        assert_eq!(at, [1, 0]);
        // Anything else keeps its names.
        assert!(heap_types(&[ValueType::new("samples", "count")]).is_none());
        assert!(heap_types(&[
            ValueType::new("inuse_space", "bytes"),
            ValueType::new("inuse_space", "bytes")
        ])
        .is_none());
    }

    #[test]
    fn a_batch_survives_the_wire() {
        let mut b = Batch::new(
            "malloc",
            vec![
                ValueType::new("alloc_bytes", "bytes"),
                ValueType::new("alloc_count", "count"),
            ],
            1_700_000_000_123,
        );
        let stack = vec![
            frame(
                FrameKind::Kernel,
                Some("do_sys_open"),
                KERNEL_MODULE,
                0xffff_8000,
            ),
            frame(FrameKind::Inlined, Some("helper"), "/bin/app", 0x1234),
            frame(FrameKind::User, Some("main"), "/bin/app", 0x1234),
            frame(FrameKind::User, None, "/lib/libc.so.6", 0x2a1f0),
            frame(
                FrameKind::Jit,
                Some("Interp::run"),
                "[jit]",
                0x7f00_0000_1000,
            ),
            // Two lines of one Python function: two frames, told apart by their lines.
            Frame {
                line: Some(9),
                ..frame(FrameKind::Interpreted, Some("Mod.leaf_c"), "[python]", 0)
            },
            frame(FrameKind::Interpreted, Some("Mod.leaf_c"), "[python]", 0),
        ];
        let mut labels = Labels::new();
        labels.insert("pid".into(), "42".into());
        labels.insert("comm".into(), "app".into());
        for (i, (v, w)) in [(4096, 2.5), (3, 2.5)].into_iter().enumerate() {
            b.samples.push(StackSample {
                stack: stack.clone(),
                labels: labels.clone(),
                value: v,
                weight: w,
                value_index: i as u8,
            });
        }
        b.samples.push(StackSample {
            stack: stack[2..].to_vec(),
            labels: labels.clone(),
            value: 7,
            weight: 1.0,
            value_index: 1,
        });
        let mut h = Histogram::new("call_latency", "nanoseconds", "main", Labels::new());
        h.add(1000, 2.0);
        b.histograms.push(h);
        // Spans name samples by index: the two values of the first stack share one pprof
        // sample, and must still find their own.
        let span = |kind, start_us, sample, label: &str| Span {
            kind,
            pid: 42,
            tid: 43,
            start_us,
            dur_us: 250,
            sample,
            label: label.into(),
        };
        b.spans = vec![
            span(SpanKind::Cpu, 1_700_000_000_000_000, Some(2), ""),
            span(SpanKind::Offcpu, 1_700_000_000_100_000, Some(1), "sleeping"),
            span(SpanKind::Request, 1_699_999_999_900_000, None, "req-7"),
            span(SpanKind::Cpu, 1_700_000_000_200_000, Some(0), ""),
        ];
        let bytes = encode_batch(&b);
        let back = decode_batch(&bytes, None, &Labels::new(), 0).expect("decodes");
        assert_eq!(back, b);
    }

    #[test]
    fn spans_that_name_no_sample_are_refused() {
        let mut b = Batch::new("cpu", vec![ValueType::new("cpu", "nanoseconds")], 1);
        b.samples.push(StackSample {
            stack: vec![frame(FrameKind::User, Some("main"), "/bin/app", 0x10)],
            labels: Labels::new(),
            value: 5,
            weight: 1.0,
            value_index: 0,
        });
        let mut pb = decode(&encode_batch(&b)).expect("pprof");
        pb.comment.push(pb.string_table.len() as i64);
        pb.string_table.push(format!(
            "{SPANS_COMMENT}{{\"k\":[\"cpu\"],\"s\":[1],\"d\":[1],\"p\":[1],\"t\":[1],\"i\":[9],\"l\":[\"\"]}}"
        ));
        let err = decode_batch(&pb.encode_to_vec(), None, &Labels::new(), 0)
            .expect_err("a span naming sample 9 of 1 is refused");
        assert!(err.to_string().contains("names sample 9 of 1"), "{err}");
    }

    #[test]
    fn request_labels_win_and_bad_input_is_refused() {
        let mut b = Batch::new("cpu", vec![ValueType::new("cpu", "nanoseconds")], 5);
        b.samples.push(StackSample {
            stack: vec![frame(FrameKind::User, Some("f"), "/bin/a", 1)],
            labels: [("host".to_string(), "liar".to_string())].into(),
            value: 10,
            weight: 1.0,
            value_index: 0,
        });
        let bytes = encode_batch(&b);
        let over: Labels = [("host".to_string(), "h1".to_string())].into();
        let back = decode_batch(&bytes, Some("go-cpu"), &over, 0).expect("decodes");
        assert_eq!(back.profiler, "go-cpu");
        assert_eq!(back.samples[0].labels["host"], "h1");
        assert!(decode_batch(b"\x1f\x8bnot gzip", None, &Labels::new(), 0).is_err());
        assert!(decode_batch(&bytes[..bytes.len() / 2], None, &Labels::new(), 0).is_err());
        // A sample naming a location that does not exist.
        let mut pb = decode(&bytes).expect("decodes");
        pb.sample[0].location_id.push(999);
        let err = decode_batch(&pb.encode_to_vec(), None, &Labels::new(), 0).unwrap_err();
        assert!(err.to_string().contains("no location 999"), "{err}");
    }
}
