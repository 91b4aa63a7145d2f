//! Config as code: a directory of TOML files, parsed, merged and validated as one tree.
//!
//! Every `*.toml` file under the directory (recursively, in path order) may hold any of these
//! tables; names must be unique across the tree:
//!
//! ```toml
//! [host]                      # host safety limits (at most once in the tree)
//! max_concurrent = 4
//! overhead_budget_percent = 1.0
//!
//! [profilers.cpu]             # overrides of a registered profiler
//! frequency = 49
//!
//! [services.checkout]         # a service: selector, labels, continuous profiling, triggers
//! selector = { cgroup = "/system.slice/checkout.service" }
//! continuous = [{ profiler = "cpu", target_samples_per_hour = 100000, duration = "30s" }]
//! ```
//!
//! A `*.bt` file is an ad-hoc profiler: a bpftrace script with a TOML header in its comments
//! (see [`adhoc`]).
//!
//! Validation gathers every problem in one pass and reports each with `file:line:col`. Nothing
//! here touches the network or the kernel; the caller passes the names of known profilers.

pub mod adhoc;
pub mod infer;
pub mod metric;
mod schema;
mod stack_schema;
mod validate;

pub use metric::MetricSelector;
pub use validate::OptionsOf;

use std::fmt;
use std::path::{Path, PathBuf};

pub use schema::{
    ConcurrencyGroup, Config, ContinuousRule, FdoRefresh, HostLimits, ProfilerOverride,
    ResourceSpec, Selector, Service, TriggerCondition, TriggerRule, TunerSettings,
};

/// One problem found in the tree, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Why a tree was rejected: every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in the config tree:\n{}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Io { .. } => &[],
        }
    }
}

/// One file of the tree, already read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the tree root, as shown in errors.
    pub path: PathBuf,
    pub text: String,
}

/// Reads every `*.toml` and `*.bt` (ad-hoc profiler) under `dir`, sorted by path.
pub fn read_tree(dir: &Path) -> Result<Vec<SourceFile>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io)? {
            let e = e.map_err(io)?;
            let p = e.path();
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if e.file_type().map_err(io)?.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml" || x == "bt") {
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Io {
                    path: p.clone(),
                    source,
                })?;
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
                files.push(SourceFile { path: rel, text });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Reads and validates the tree in `dir`.
pub fn load_dir(dir: &Path, known_profilers: &[&str]) -> Result<Config, ConfigError> {
    let files = read_tree(dir)?;
    load(&files, known_profilers)
}

/// Validates already-read files as one tree.
pub fn load(files: &[SourceFile], known_profilers: &[&str]) -> Result<Config, ConfigError> {
    validate::validate(files, known_profilers, &|_| None)
}

/// As [`load`], also checking option names (see [`load_dir_checked`]).
pub fn load_checked(
    files: &[SourceFile],
    known_profilers: &[&str],
    options_of: validate::OptionsOf<'_>,
) -> Result<Config, ConfigError> {
    validate::validate(files, known_profilers, options_of)
}

/// As [`load_dir`], also checking each `[profilers.NAME] options` key against the names
/// `options_of(NAME)` gives (the registry's), with `file:line:col` and a hint.
pub fn load_dir_checked(
    dir: &Path,
    known_profilers: &[&str],
    options_of: validate::OptionsOf<'_>,
) -> Result<Config, ConfigError> {
    let files = read_tree(dir)?;
    validate::validate(&files, known_profilers, options_of)
}

/// A short stable version of the tree: FNV-1a over paths and contents, in hex.
pub fn version_of(files: &[SourceFile]) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    let paths: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    for (f, p) in files.iter().zip(&paths) {
        parts.push(p.as_bytes());
        parts.push(f.text.as_bytes());
    }
    format!("{:016x}", baton_model::batch::fnv1a(&parts))
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

#[cfg(test)]
mod tests;
