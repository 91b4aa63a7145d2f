//! pprof (profile.proto) encoding, gzip-compressed as `go tool pprof` reads it.
//!
//! The messages are declared by hand with `prost` derives, field numbers as in profile.proto.

use std::collections::HashMap;
use std::io::{self, Write};

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use crate::frame::Frame;
use crate::frame::{FrameKind, KERNEL_MODULE};
use crate::profile::Profile;

#[derive(Clone, PartialEq, Message)]
pub struct PbProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<PbValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PbSample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<PbMapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<PbLocation>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<PbFunction>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<PbValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbSample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<PbLabel>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLabel {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbMapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLocation {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<PbLine>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLine {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbFunction {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Interns strings into the pprof string table; index 0 is always "".
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.get("");
        s
    }
    fn get(&mut self, v: &str) -> i64 {
        if let Some(&i) = self.index.get(v) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(v.to_string());
        self.index.insert(v.to_string(), i);
        i
    }
}

/// A pprof sample's identity: its location ids and labels.
type SampleKey = (Vec<u64>, Vec<(String, String)>);

/// Labels whose values are numbers in pprof (`pid`, `tid`).
const NUMERIC_LABELS: &[&str] = &["pid", "tid"];

/// Builds the pprof message. Locations carry the module's file offset as their address, in a
/// mapping that starts at 0, so addresses stay comparable across processes and hosts.
pub fn build(profile: &Profile) -> PbProfile {
    build_with(profile, false)
}

/// As [`build`]; with `raw_unknown`, a frame with no symbol gets a location with no line (only
/// its mapping and file offset), which is how the wire format marks it for the server's
/// symbolizer.
pub fn build_with(profile: &Profile, raw_unknown: bool) -> PbProfile {
    build_placed(profile, raw_unknown).0
}

/// As [`build_with`], and where each of the profile's samples went: the index of its pprof
/// sample (several value types of one stack and labels share one) and its slot in `value`.
pub fn build_placed(profile: &Profile, raw_unknown: bool) -> (PbProfile, Vec<(usize, usize)>) {
    let mut placed = Vec::with_capacity(profile.samples.len());
    let mut st = Strings::new();
    let mut pb = PbProfile::default();
    let with_count = profile.period_ns.is_some();
    if with_count {
        pb.sample_type.push(PbValueType {
            r#type: st.get("samples"),
            unit: st.get("count"),
        });
    }
    for t in profile.value_types() {
        pb.sample_type.push(PbValueType {
            r#type: st.get(&t.kind),
            unit: st.get(&t.unit),
        });
    }
    // Samples of several value types that share a stack and labels become one pprof sample.
    let n_values = pb.sample_type.len();
    let first_value = usize::from(with_count);
    let mut merged: HashMap<SampleKey, usize> = HashMap::new();
    if let Some(p) = profile.period_ns {
        pb.period_type = Some(PbValueType {
            r#type: st.get(&profile.value_type.kind),
            unit: st.get(&profile.value_type.unit),
        });
        pb.period = p as i64;
    }
    if let Some(e) = &profile.event {
        let c = st.get(&format!("event: {e}"));
        pb.comment.push(c);
    }
    pb.time_nanos = profile.start_unix_ns;
    pb.duration_nanos = profile.duration_ns;

    let mut mappings: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    // An interpreted frame has no address: its file and line tell its locations apart.
    type LocationKey = (
        FrameKind,
        String,
        u64,
        Option<String>,
        Vec<String>,
        Option<String>,
        Option<u32>,
    );
    let mut locations: HashMap<LocationKey, u64> = HashMap::new();
    let mut mapping_unresolved: HashMap<u64, bool> = HashMap::new();

    for s in &profile.samples {
        let mut loc_ids = Vec::with_capacity(s.stack.len());
        // Inlined frames (leaf first) wait for the frame they were inlined into, and become
        // the first lines of its location, as pprof represents inlining.
        let mut inlined: Vec<&Frame> = Vec::new();
        for f in &s.stack {
            if f.kind == FrameKind::Inlined {
                inlined.push(f);
                continue;
            }
            let mkey = (f.module.clone(), f.build_id.clone());
            let mid = match mappings.get(&mkey) {
                Some(&id) => id,
                None => {
                    let id = pb.mapping.len() as u64 + 1;
                    let filename = st.get(&f.module);
                    let build_id = st.get(f.build_id.as_deref().unwrap_or(""));
                    pb.mapping.push(PbMapping {
                        id,
                        memory_start: 0,
                        memory_limit: if f.module == KERNEL_MODULE {
                            u64::MAX
                        } else {
                            0
                        },
                        file_offset: 0,
                        filename,
                        build_id,
                        ..Default::default()
                    });
                    mappings.insert(mkey, id);
                    id
                }
            };
            let chain: Vec<String> = inlined.iter().map(|i| i.display_name()).collect();
            let (file, line) = match f.kind {
                FrameKind::Interpreted => (f.file.clone(), f.line),
                _ => (None, None),
            };
            let lkey = (
                f.kind,
                f.module.clone(),
                f.address,
                f.function.clone(),
                chain,
                file,
                line,
            );
            let lid = match locations.get(&lkey) {
                Some(&id) => id,
                None => {
                    let id = pb.location.len() as u64 + 1;
                    if f.function.is_none() {
                        mapping_unresolved.insert(mid, true);
                    }
                    let lines = if raw_unknown && f.function.is_none() && inlined.is_empty() {
                        Vec::new()
                    } else {
                        inlined
                            .iter()
                            .copied()
                            .chain(std::iter::once(f))
                            .map(|fr| PbLine {
                                function_id: function_id(&mut pb, &mut st, &mut functions, fr),
                                line: fr.line.map(i64::from).unwrap_or(0),
                            })
                            .collect()
                    };
                    pb.location.push(PbLocation {
                        id,
                        mapping_id: mid,
                        address: f.address,
                        line: lines,
                    });
                    locations.insert(lkey, id);
                    id
                }
            };
            inlined.clear();
            loc_ids.push(lid);
        }
        let weighted = s.weighted();
        let mut values = vec![0i64; n_values];
        if with_count && s.value_index == 0 {
            values[0] = profile.as_sample_count(weighted).round() as i64;
        }
        let slot = (first_value + usize::from(s.value_index)).min(n_values - 1);
        values[slot] = weighted.round() as i64;
        if !profile.more_value_types.is_empty() {
            let key = (
                loc_ids.clone(),
                s.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            if let Some(&i) = merged.get(&key) {
                for (a, b) in pb.sample[i].value.iter_mut().zip(&values) {
                    *a += b;
                }
                placed.push((i, slot));
                continue;
            }
            merged.insert(key, pb.sample.len());
        }
        placed.push((pb.sample.len(), slot));
        let mut labels = Vec::with_capacity(s.labels.len());
        for (k, v) in &s.labels {
            let key = st.get(k);
            if NUMERIC_LABELS.contains(&k.as_str()) {
                if let Ok(n) = v.parse::<i64>() {
                    labels.push(PbLabel {
                        key,
                        num: n,
                        ..Default::default()
                    });
                    continue;
                }
            }
            labels.push(PbLabel {
                key,
                str: st.get(v),
                ..Default::default()
            });
        }
        pb.sample.push(PbSample {
            location_id: loc_ids,
            value: values,
            label: labels,
        });
    }
    // Every location already carries its name (unknown ones as `module+0xoff`), so tell pprof
    // not to try to symbolize again; file names and lines are present where we found them.
    for m in &mut pb.mapping {
        m.has_functions = true;
        m.has_filenames = !mapping_unresolved.contains_key(&m.id);
    }
    pb.string_table = st.table;
    (pb, placed)
}

/// The pprof function of a frame (by display name and file), added on first use.
fn function_id(
    pb: &mut PbProfile,
    st: &mut Strings,
    functions: &mut HashMap<(String, String), u64>,
    f: &Frame,
) -> u64 {
    let name = f.display_name();
    let file = f.file.clone().unwrap_or_default();
    let key = (name, file);
    if let Some(&id) = functions.get(&key) {
        return id;
    }
    let id = pb.function.len() as u64 + 1;
    let n = st.get(&key.0);
    let fname = st.get(&key.1);
    pb.function.push(PbFunction {
        id,
        name: n,
        system_name: n,
        filename: fname,
    });
    functions.insert(key, id);
    id
}

/// Writes the profile as gzip-compressed protobuf.
pub fn write_gzipped(profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
    let bytes = build(profile).encode_to_vec();
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?;
    Ok(())
}

/// Why a pprof payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("bad gzip stream: {0}")]
    Gzip(io::Error),
    #[error("bad protobuf: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

impl DecodeError {
    /// Whether the input was refused for its size rather than its form (HTTP 413, not 400).
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            DecodeError::Limit(crate::limits::LimitError::TooLarge { .. })
        )
    }
}

/// Decodes a pprof file from an untrusted source, gzip-compressed or not: refused, before
/// anything is decoded, when it expands past `limits.max_bytes` or lists more elements than
/// `limits` allow.
pub fn decode_within(
    bytes: &[u8],
    limits: &crate::limits::Limits,
) -> Result<PbProfile, DecodeError> {
    let raw = crate::limits::inflate(bytes, limits.max_bytes)?;
    crate::limits::check_pprof(&raw, limits)?;
    Ok(PbProfile::decode(raw.as_ref())?)
}

/// Decodes a pprof file, gzip-compressed or not, within the default [`crate::limits::Limits`].
pub fn decode(bytes: &[u8]) -> Result<PbProfile, DecodeError> {
    decode_within(bytes, &crate::limits::Limits::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::profile::{StackSample, ValueType};

    fn frame(name: &str) -> Frame {
        Frame {
            kind: FrameKind::User,
            function: Some(name.into()),
            module: "/bin/app".into(),
            build_id: Some("abcd".into()),
            address: name.len() as u64,
            file: None,
            line: None,
        }
    }

    #[test]
    fn round_trips_through_protobuf() {
        let mut p = Profile::new(ValueType::cpu_nanoseconds());
        p.period_ns = Some(10);
        p.samples.push(StackSample {
            stack: vec![frame("leaf"), frame("main")],
            labels: [("pid".to_string(), "42".to_string())].into(),
            value: 30,
            weight: 2.0,
            value_index: 0,
        });
        let mut buf = Vec::new();
        write_gzipped(&p, &mut buf).expect("write");
        let pb = decode(&buf).expect("decode");
        assert_eq!(pb.sample.len(), 1);
        assert_eq!(pb.sample[0].value, vec![6, 60]);
        assert_eq!(pb.sample[0].label[0].num, 42);
        let leaf_loc = &pb.location[(pb.sample[0].location_id[0] - 1) as usize];
        let f = &pb.function[(leaf_loc.line[0].function_id - 1) as usize];
        assert_eq!(pb.string_table[f.name as usize], "leaf");
    }

    #[test]
    fn several_value_types_share_one_sample_per_stack() {
        let mut p = Profile::new(ValueType::new("alloc_bytes", "bytes"));
        p.more_value_types = vec![
            ValueType::new("alloc_count", "count"),
            ValueType::new("live_bytes", "bytes"),
        ];
        for (i, v) in [(0u8, 4096i64), (1, 1), (2, 4096)] {
            p.samples.push(StackSample {
                stack: vec![frame("site"), frame("main")],
                labels: [("pid".to_string(), "7".to_string())].into(),
                value: v,
                weight: 1.0,
                value_index: i,
            });
        }
        p.samples.push(StackSample {
            stack: vec![frame("other")],
            labels: [("pid".to_string(), "7".to_string())].into(),
            value: 1,
            weight: 1.0,
            value_index: 1,
        });
        let mut buf = Vec::new();
        write_gzipped(&p, &mut buf).expect("write");
        let pb = decode(&buf).expect("decode");
        let types: Vec<&str> = pb
            .sample_type
            .iter()
            .map(|t| pb.string_table[t.r#type as usize].as_str())
            .collect();
        assert_eq!(types, vec!["alloc_bytes", "alloc_count", "live_bytes"]);
        assert_eq!(pb.sample.len(), 2);
        assert_eq!(pb.sample[0].value, vec![4096, 1, 4096]);
        assert_eq!(pb.sample[1].value, vec![0, 1, 0]);
        let only = p.select(Some("live_bytes")).expect("select");
        assert_eq!(only.value_type.kind, "live_bytes");
        assert_eq!(only.samples.len(), 1);
        assert_eq!(only.total(), 4096.0);
    }
}
