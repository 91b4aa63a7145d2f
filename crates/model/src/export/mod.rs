//! Export formats: pprof, collapsed stacks, speedscope, SVG flame graph and JSON.

pub mod collapsed;
pub mod pprof;
pub mod speedscope;
pub mod svg;

use std::io::Write;
use std::path::Path;

use crate::profile::Profile;

/// An output format for a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pprof,
    Collapsed,
    Speedscope,
    Svg,
    Json,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("flame graph rendering failed: {0}")]
    Svg(String),
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}

impl Format {
    pub const NAMES: &'static str = "pprof, collapsed, speedscope, svg, json";

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "pprof" | "pb" | "pb.gz" => Format::Pprof,
            "collapsed" | "folded" => Format::Collapsed,
            "speedscope" => Format::Speedscope,
            "svg" => Format::Svg,
            "json" => Format::Json,
            _ => return None,
        })
    }

    /// Guesses the format from a file name: `.pb.gz`/`.pprof`, `.folded`/`.collapsed`,
    /// `.speedscope.json`, `.svg`, `.json`.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".pb.gz") || name.ends_with(".pprof") || name.ends_with(".pb") {
            Some(Format::Pprof)
        } else if name.ends_with(".folded") || name.ends_with(".collapsed") {
            Some(Format::Collapsed)
        } else if name.ends_with(".speedscope.json") || name.ends_with(".speedscope") {
            Some(Format::Speedscope)
        } else if name.ends_with(".svg") {
            Some(Format::Svg)
        } else if name.ends_with(".json") {
            Some(Format::Json)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Pprof => "pprof",
            Format::Collapsed => "collapsed",
            Format::Speedscope => "speedscope",
            Format::Svg => "svg",
            Format::Json => "json",
        }
    }
}

/// The JSON document for `--format json`: summary, top functions and flame tree.
#[derive(serde::Serialize)]
struct JsonDoc<'a> {
    value_type: &'a crate::profile::ValueType,
    event: Option<&'a str>,
    period_ns: Option<u64>,
    start_unix_ns: i64,
    duration_ns: i64,
    total: f64,
    top: Vec<crate::flame::TopEntry>,
    flamegraph: crate::flame::FlameNode,
}

/// Writes `profile` in `format` to `out`.
pub fn write(profile: &Profile, format: Format, out: &mut dyn Write) -> Result<(), ExportError> {
    match format {
        Format::Pprof => pprof::write_gzipped(profile, out)?,
        Format::Collapsed => collapsed::write(profile, out)?,
        Format::Speedscope => speedscope::write(profile, out)?,
        Format::Svg => svg::write(profile, out)?,
        Format::Json => {
            let doc = JsonDoc {
                value_type: &profile.value_type,
                event: profile.event.as_deref(),
                period_ns: profile.period_ns,
                start_unix_ns: profile.start_unix_ns,
                duration_ns: profile.duration_ns,
                total: profile.total(),
                top: profile.top_functions(),
                flamegraph: profile.flame_tree(),
            };
            serde_json::to_writer(&mut *out, &doc)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_path(Path::new("a.pb.gz")), Some(Format::Pprof));
        assert_eq!(
            Format::from_path(Path::new("a.folded")),
            Some(Format::Collapsed)
        );
        assert_eq!(
            Format::from_path(Path::new("x.speedscope.json")),
            Some(Format::Speedscope)
        );
        assert_eq!(Format::from_path(Path::new("x.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("x.svg")), Some(Format::Svg));
        assert_eq!(Format::from_path(Path::new("x.txt")), None);
    }
}
