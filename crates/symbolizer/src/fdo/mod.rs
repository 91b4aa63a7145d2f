//! Feedback-directed optimization: the CPU samples of one build ID turned into an LLVM sample
//! profile (`clang -fprofile-sample-use`) and a BOLT profile (`llvm-bolt -data`), with a count
//! of what could not be mapped to source and why.

mod dwarf;
mod profile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_model::{FrameKind, Profile, StackSample};
use object::{Object, ObjectSegment, ObjectSymbol};
use serde::{Deserialize, Serialize};

pub use dwarf::{base_discriminator, Loc, Lookup};
pub use profile::{FunctionSamples, SampleProfile};

/// Why building an FDO profile failed.
#[derive(Debug)]
pub enum FdoError {
    /// The binary cannot be read or is not an ELF file.
    Binary(String),
    /// The binary's build ID is not the one asked for.
    BuildIdMismatch { wanted: String, binary: String },
    /// The binary has no build ID to select samples by.
    NoBuildId(PathBuf),
}

impl std::fmt::Display for FdoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FdoError::Binary(m) => write!(f, "{m}"),
            FdoError::BuildIdMismatch { wanted, binary } => write!(
                f,
                "the binary's build ID is {binary}, not {wanted}: give the binary the samples \
                 were taken from"
            ),
            FdoError::NoBuildId(p) => write!(
                f,
                "{} has no GNU build ID: link with -Wl,--build-id so its samples can be found",
                p.display()
            ),
        }
    }
}

impl std::error::Error for FdoError {}

/// The weighted CPU samples of one build ID: stacks of file offsets, leaf first, where `None`
/// is a frame of another module. Counts are microseconds of CPU time (value × weight), so
/// samples taken at different frequencies, on different hosts, add up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub build_id: String,
    pub stacks: Vec<SampleStack>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleStack {
    pub frames: Vec<Option<u64>>,
    pub count: f64,
}

impl Samples {
    /// The samples of `build_id` in a CPU profile: every stack with at least one frame of it.
    /// Inlined frames are skipped (the sample profile expands inlining itself, from DWARF).
    pub fn from_profile(p: &Profile, build_id: &str) -> Samples {
        Samples::from_stacks(&p.value_type.unit, 0, &p.samples, build_id)
    }

    /// [`Samples::from_profile`] of the stacks whose value `index` is in `unit`.
    pub fn from_stacks(unit: &str, index: u8, samples: &[StackSample], build_id: &str) -> Samples {
        let per_us = match unit {
            "nanoseconds" => 1e-3,
            _ => 1.0,
        };
        let mut by_stack: BTreeMap<Vec<Option<u64>>, f64> = BTreeMap::new();
        for s in samples {
            if s.value_index != index {
                continue;
            }
            let frames: Vec<Option<u64>> = s
                .stack
                .iter()
                .filter(|f| f.kind != FrameKind::Inlined)
                .map(|f| {
                    (f.kind == FrameKind::User && f.build_id.as_deref() == Some(build_id))
                        .then_some(f.address)
                })
                .collect();
            if frames.iter().all(Option::is_none) {
                continue;
            }
            *by_stack.entry(frames).or_default() += s.weighted() * per_us;
        }
        Samples {
            build_id: build_id.to_string(),
            stacks: stacks_of(by_stack),
        }
    }

    /// Adds another set of samples of the same build ID (another host, store or time range).
    pub fn merge(&mut self, other: &Samples) {
        let mut by_stack: BTreeMap<Vec<Option<u64>>, f64> = BTreeMap::new();
        for s in self.stacks.iter().chain(&other.stacks) {
            *by_stack.entry(s.frames.clone()).or_default() += s.count;
        }
        self.stacks = stacks_of(by_stack);
    }

    pub fn total(&self) -> f64 {
        self.stacks.iter().map(|s| s.count).sum()
    }

    /// The build IDs a profile has user samples of, most CPU first: what to ask for.
    pub fn build_ids(samples: &[StackSample]) -> Vec<(String, String, f64)> {
        let mut by: BTreeMap<(String, String), f64> = BTreeMap::new();
        for s in samples {
            let leaf = s.stack.iter().find(|f| f.kind != FrameKind::Inlined);
            if let Some(f) = leaf.filter(|f| f.kind == FrameKind::User) {
                if let Some(b) = &f.build_id {
                    *by.entry((b.clone(), f.module.clone())).or_default() += s.weighted();
                }
            }
        }
        let mut v: Vec<_> = by.into_iter().map(|((b, m), w)| (b, m, w)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}

/// The binary of a build ID on this host: `known` (uploaded debug info) first, else (with
/// `local_paths`, where the samples were taken on this host) a module path of the samples that
/// is a file here with that build ID.
pub fn find_binary(
    samples: &[StackSample],
    build_id: &str,
    known: Option<PathBuf>,
    local_paths: bool,
) -> Option<PathBuf> {
    if known.is_some() || !local_paths {
        return known;
    }
    let mut seen = std::collections::HashSet::new();
    for s in samples {
        for f in &s.stack {
            if f.kind == FrameKind::User
                && f.build_id.as_deref() == Some(build_id)
                && seen.insert(f.module.as_str())
            {
                let p = PathBuf::from(&f.module);
                if p.is_file() && crate::build_id_of(&p).as_deref() == Some(build_id) {
                    return Some(p);
                }
            }
        }
    }
    None
}

fn stacks_of(by_stack: BTreeMap<Vec<Option<u64>>, f64>) -> Vec<SampleStack> {
    by_stack
        .into_iter()
        .map(|(frames, count)| SampleStack { frames, count })
        .collect()
}

/// How many sampled leaf addresses were mapped to source, and why the others were not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// All samples whose leaf frame is in the binary.
    pub samples: f64,
    pub mapped: f64,
    /// In a function, but DWARF has no line for the address (no line table, a stripped
    /// binary).
    pub no_line_table: f64,
    /// At line 0: code the compiler generated for no source line (a sample profile has no
    /// place for it; LLVM's own tools drop it too).
    #[serde(default)]
    pub line_zero: f64,
    /// In a function DWARF gives no start line for (built without
    /// `-fdebug-info-for-profiling`): its lines have nothing to count from.
    #[serde(default)]
    pub no_start_line: f64,
    /// Outside every function the binary's symbols and DWARF know.
    pub outside_functions: f64,
    /// Samples of the build ID whose leaf is in another module (a library it called).
    pub leaf_elsewhere: f64,
    /// Whether the binary has any line table at all.
    pub binary_has_lines: bool,
}

impl Coverage {
    pub fn mapped_share(&self) -> f64 {
        if self.samples > 0.0 {
            self.mapped / self.samples
        } else {
            0.0
        }
    }
}

/// An ELF binary read for FDO: its build ID, loadable segments, function symbols and DWARF.
pub struct FdoBinary {
    pub path: PathBuf,
    pub build_id: Option<String>,
    /// `(file offset, virtual address, file size)` of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// `(start, end, name)` of each function symbol, sorted; local ones named as BOLT names
    /// them (`NAME/N`).
    symbols: Vec<(u64, u64, String)>,
    tables: dwarf::Tables,
}

impl FdoBinary {
    pub fn open(path: &Path) -> Result<FdoBinary, FdoError> {
        let data = std::fs::read(path)
            .map_err(|e| FdoError::Binary(format!("{}: {e}", path.display())))?;
        let file = object::File::parse(&*data)
            .map_err(|e| FdoError::Binary(format!("{}: not an ELF file ({e})", path.display())))?;
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(crate::hex)
            .filter(|b| !b.is_empty());
        // A separate debug file keeps the program headers with its data gone: its segments
        // still say where each file offset of the real binary loads.
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, s.address(), if size == 0 { s.size() } else { size })
            })
            .filter(|s| s.2 > 0)
            .collect();
        let mut all: Vec<(u64, u64, String, bool)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
            .filter_map(|s| {
                Some((
                    s.address(),
                    s.address() + s.size(),
                    s.name().ok()?.to_string(),
                    s.is_local(),
                ))
            })
            .collect();
        all.sort();
        all.dedup_by_key(|s| s.0);
        // BOLT names a local symbol NAME/N, N counting that name's local symbols in address
        // order; its profiles must name them the same way.
        let mut seen: std::collections::HashMap<String, u32> = Default::default();
        let symbols = all
            .into_iter()
            .map(|(lo, hi, name, local)| {
                if local {
                    let n = seen.entry(name.clone()).or_default();
                    *n += 1;
                    (lo, hi, format!("{name}/{n}"))
                } else {
                    (lo, hi, name)
                }
            })
            .collect();
        let tables = dwarf::Tables::read(&file)
            .map_err(|e| FdoError::Binary(format!("{}: DWARF: {e}", path.display())))?;
        Ok(FdoBinary {
            path: path.to_path_buf(),
            build_id,
            segments,
            symbols,
            tables,
        })
    }

    /// Opens the binary and checks that it is the one `build_id` names.
    pub fn open_for(path: &Path, build_id: Option<&str>) -> Result<FdoBinary, FdoError> {
        let bin = FdoBinary::open(path)?;
        let Some(own) = bin.build_id.clone() else {
            return Err(FdoError::NoBuildId(path.to_path_buf()));
        };
        if let Some(wanted) = build_id {
            if !wanted.eq_ignore_ascii_case(&own) {
                return Err(FdoError::BuildIdMismatch {
                    wanted: wanted.to_string(),
                    binary: own,
                });
            }
        }
        Ok(bin)
    }

    /// The virtual address a file offset is loaded at.
    pub fn vaddr(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(off, _, size)| off <= offset && offset < off + size)
            .map(|&(off, vaddr, _)| vaddr + (offset - off))
    }

    /// The function symbol containing a virtual address, and the address's offset in it.
    pub fn symbol(&self, vaddr: u64) -> Option<(&str, u64)> {
        let i = self.symbols.partition_point(|s| s.0 <= vaddr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        (vaddr < s.1).then(|| (s.2.as_str(), vaddr - s.0))
    }

    /// The DWARF inline chain of a virtual address.
    pub fn lookup(&self, vaddr: u64) -> Lookup {
        match self.tables.lookup(vaddr) {
            Lookup::NoFunction if self.symbol(vaddr).is_some() => Lookup::NoLine,
            // The function itself named elsewhere: its symbol is its linkage name.
            Lookup::Found(mut chain) if chain[0].function.is_empty() => match self.symbol(vaddr) {
                Some((name, _)) => {
                    let bare = name.rsplit_once('/').map_or(name, |(n, _)| n);
                    chain[0].function = bare.to_string();
                    Lookup::Found(chain)
                }
                None => Lookup::NoFunction,
            },
            l => l,
        }
    }

    pub fn has_lines(&self) -> bool {
        self.tables.has_lines()
    }

    /// A BOLT profile in the form `perf2bolt -nl` writes: one line per sampled address,
    /// `1 FUNCTION OFFSET COUNT` (offset in hex), after a `no_lbr EVENT:` header.
    pub fn bolt_profile(&self, samples: &Samples, event: &str) -> String {
        let mut counts: BTreeMap<(String, u64), f64> = BTreeMap::new();
        for s in &samples.stacks {
            let Some(Some(off)) = s.frames.first() else {
                continue;
            };
            let Some(va) = self.vaddr(*off) else { continue };
            if let Some((name, at)) = self.symbol(va) {
                *counts.entry((name.to_string(), at)).or_default() += s.count;
            }
        }
        let mut out = format!("no_lbr {event}:\n");
        for ((name, at), c) in counts {
            let c = c.round() as u64;
            if c > 0 {
                out.push_str(&format!("1 {name} {at:x} {c}\n"));
            }
        }
        out
    }
}
