//! The flame graph's three encodings: the nested tree (JSON), the flat pre-order arrays
//! (JSON), and the same arrays in binary, which the UI loads straight into typed arrays.
//! The flat ones may be pruned to what one screen can show, and gzipped.

use std::io::Write;

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::{FlameNode, FlatTree, NamedStacks};
use serde::{Serialize, Serializer};

use crate::params::ApiParams;

/// Which encoding a call asks for (`shape=`), and the flat ones' pruning (`min_share=`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FlameShape {
    pub kind: ShapeKind,
    pub min_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ShapeKind {
    Tree,
    Flat,
    FlatBinary,
}

impl FlameShape {
    /// Reads `shape` and `min_share` from the raw query (`parse_params` has checked them).
    pub fn from_query(raw: &str) -> FlameShape {
        let min_share = raw
            .split('&')
            .find_map(|kv| kv.strip_prefix("min_share="))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let kind = if raw.split('&').any(|kv| kv == "shape=flat") {
            ShapeKind::Flat
        } else if raw.split('&').any(|kv| kv == "shape=flatbin") {
            ShapeKind::FlatBinary
        } else {
            ShapeKind::Tree
        };
        FlameShape { kind, min_share }
    }
}

/// The default shape: the nested tree, children by name.
#[derive(Debug, Serialize)]
pub struct FlameTree {
    pub from_ms: i64,
    pub to_ms: i64,
    pub unit: String,
    pub total: f64,
    pub tree: FlameNode,
}

/// What both flat shapes say besides the node arrays: range, unit, total, counts and names.
#[derive(Debug, Serialize)]
pub struct FlatHeader<'a> {
    pub from_ms: i64,
    pub to_ms: i64,
    pub unit: &'a str,
    pub total: f64,
    pub stacks: usize,
    pub nodes: usize,
    pub names: &'a [String],
}

/// `shape=flat`: the header plus the tree in pre-order as three arrays, `n` (index into
/// `names`), `d` (depth, the root at 0) and `v` (total value, rounded).
#[derive(Debug, Serialize)]
pub struct FlatJson<'a> {
    #[serde(flatten)]
    pub header: FlatHeader<'a>,
    pub n: &'a [u32],
    pub d: &'a [u16],
    #[serde(serialize_with = "rounded")]
    pub v: &'a [f64],
}

/// Values as whole numbers, without a copy of the array.
fn rounded<S: Serializer>(v: &&[f64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.round() as i64))
}

/// Whether the client takes gzip.
pub(crate) fn gzip_ok(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

fn unit(named: &NamedStacks) -> &str {
    named
        .value_type
        .as_ref()
        .map_or("nanoseconds", |v| v.unit.as_str())
}

/// The flame graph of `named` in the shape asked for.
pub(crate) fn encode(
    named: &NamedStacks,
    p: &ApiParams,
    shape: FlameShape,
    gzip: bool,
) -> Response {
    match shape.kind {
        ShapeKind::Tree => {
            let tree = named.flame_tree();
            Json(FlameTree {
                from_ms: p.query.from_ms,
                to_ms: p.query.to_ms,
                unit: unit(named).to_string(),
                total: tree.value,
                tree,
            })
            .into_response()
        }
        ShapeKind::Flat => {
            let flat = named.pruned_flat_tree(shape.min_share);
            let body = FlatJson {
                header: header(named, p, &flat),
                n: &flat.name,
                d: &flat.depth,
                v: &flat.values,
            };
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            maybe_gzip(bytes, "application/json", gzip)
        }
        ShapeKind::FlatBinary => flat_binary(named, p, shape.min_share, gzip),
    }
}

fn header<'a>(named: &'a NamedStacks, p: &ApiParams, flat: &'a FlatTree) -> FlatHeader<'a> {
    FlatHeader {
        from_ms: p.query.from_ms,
        to_ms: p.query.to_ms,
        unit: unit(named),
        total: flat.values.first().copied().unwrap_or(0.0),
        stacks: named.stacks.len(),
        nodes: flat.name.len(),
        names: &flat.names,
    }
}

/// The flat tree in binary, what the UI loads: a little-endian u32 length, a JSON
/// [`FlatHeader`], zero padding to a multiple of 8, then `n` as u32s, `v` as f64s and `d` as
/// u8s (depths past 255 are clamped), each array `nodes` long and the first two 8-byte
/// aligned. Typed arrays read it with no parsing. `min_share` > 0 leaves out nodes under that
/// share of the total, with their subtrees (the UI's first frame asks for what one screen
/// width can show, then for everything).
fn flat_binary(named: &NamedStacks, p: &ApiParams, min_share: f64, gzip: bool) -> Response {
    let t0 = std::time::Instant::now();
    let flat = named.pruned_flat_tree(min_share);
    tracing::debug!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        nodes = flat.name.len(),
        "flat tree built"
    );
    let nodes = flat.name.len();
    let head = serde_json::to_vec(&header(named, p, &flat)).unwrap_or_default();
    let mut out = Vec::with_capacity(16 + head.len() + nodes * 13 + 16);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    pad8(&mut out);
    for &n in &flat.name {
        out.extend_from_slice(&n.to_le_bytes());
    }
    pad8(&mut out);
    for &v in &flat.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend(flat.depth.iter().map(|&d| d.min(255) as u8));
    maybe_gzip(out, "application/octet-stream", gzip)
}

fn pad8(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(8), 0);
}

/// The body as is, or gzipped (fast level) when the client takes it.
fn maybe_gzip(bytes: Vec<u8>, content_type: &'static str, gzip: bool) -> Response {
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(bytes.len() / 4),
            flate2::Compression::fast(),
        );
        if let Ok(z) = enc.write_all(&bytes).and_then(|()| enc.finish()) {
            return (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CONTENT_ENCODING, "gzip"),
                ],
                z,
            )
                .into_response();
        }
    }
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> NamedStacks {
        NamedStacks::intern([(vec!["leaf", "main"], 3.0), (vec!["other", "main"], 1.0)])
    }

    fn params() -> ApiParams {
        crate::parse_params("from=1000&to=2000").expect("params")
    }

    #[test]
    fn shapes_are_read_from_the_query() {
        let s = FlameShape::from_query("since=1h&shape=flatbin&min_share=0.01");
        assert_eq!(s.kind, ShapeKind::FlatBinary);
        assert_eq!(s.min_share, 0.01);
        assert_eq!(FlameShape::from_query("").kind, ShapeKind::Tree);
        assert_eq!(FlameShape::from_query("shape=flat").kind, ShapeKind::Flat);
    }

    #[test]
    fn flat_json_holds_the_header_and_rounded_values() {
        let n = named();
        let flat = n.pruned_flat_tree(0.0);
        let body = FlatJson {
            header: header(&n, &params(), &flat),
            n: &flat.name,
            d: &flat.depth,
            v: &flat.values,
        };
        let v: serde_json::Value = serde_json::to_value(&body).expect("json");
        assert_eq!(v["from_ms"], 1000);
        assert_eq!(v["total"], 4.0);
        assert_eq!(v["nodes"], 4);
        assert_eq!(v["v"][0], 4);
        assert_eq!(v["d"][0], 0);
        assert_eq!(v["names"].as_array().map(Vec::len), Some(flat.names.len()));
    }

    #[tokio::test]
    async fn flat_binary_is_aligned_and_complete() {
        let n = named();
        let resp = flat_binary(&n, &params(), 0.0, false);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
        let head: serde_json::Value = serde_json::from_slice(&body[4..4 + len]).expect("header");
        let nodes = head["nodes"].as_u64().expect("nodes") as usize;
        let names_at = (4 + len).next_multiple_of(8);
        let values_at = (names_at + 4 * nodes).next_multiple_of(8);
        assert_eq!(body.len(), values_at + 8 * nodes + nodes);
        let root = f64::from_le_bytes(body[values_at..values_at + 8].try_into().expect("8"));
        assert_eq!(root, 4.0);
    }
}
