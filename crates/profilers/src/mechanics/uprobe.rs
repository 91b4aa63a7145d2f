//! What uprobe profilers share: finding the binary a probe goes in, and the functions of an ELF
//! file that match a pattern, with the file offsets uprobes attach at.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use libbpf_rs::MapCore;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::ProfilerError;

/// The file a probe spec names, for process `pid` (or this host when `None`):
/// - empty: the process's executable;
/// - an absolute path: that file;
/// - otherwise a library name (`libc`, `libssl.so.3`): the first file the process maps whose
///   name starts with it.
///
/// Paths are taken through `/proc/PID/root`, so processes in containers work.
pub fn resolve_binary(pid: Option<u32>, spec: &str) -> Result<PathBuf, ProfilerError> {
    let proc_dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    if spec.is_empty() {
        let Some(pid) = pid else {
            return Err(ProfilerError::Attach(
                "profiling every process needs a binary: write the probe as PATH:PATTERN".into(),
            ));
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|_| ProfilerError::NoSuchProcess(pid))?;
        return Ok(rooted(&proc_dir, &exe));
    }
    if spec.starts_with('/') {
        let p = PathBuf::from(spec);
        return if p.exists() {
            Ok(p)
        } else {
            Err(ProfilerError::Attach(format!("{spec} does not exist")))
        };
    }
    let maps = std::fs::read_to_string(format!("{proc_dir}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(spec))
        })
        .map(|path| rooted(&proc_dir, Path::new(path)))
        .ok_or_else(|| {
            ProfilerError::Attach(format!(
                "no library named {spec}* is mapped by {}; give its absolute path",
                pid.map_or("this process".to_string(), |p| format!("process {p}"))
            ))
        })
}

fn rooted(proc_dir: &str, path: &Path) -> PathBuf {
    let r = PathBuf::from(format!("{proc_dir}/root{}", path.display()));
    if r.exists() {
        r
    } else {
        path.to_path_buf()
    }
}

/// The processes a uprobe profiler has probes in. Uprobes are attached per process (so no
/// other process traps); BPF adds the children of targets to the targets map as they fork, and
/// [`PerProcess::attach_children`] attaches to them.
#[derive(Debug, Default)]
pub(crate) struct Followed {
    attached: HashSet<u32>,
    /// Probes on every process: there are no children to follow.
    all: bool,
}

impl Followed {
    /// For a profiler of `targets`, or of every process when `None`.
    pub(crate) fn new(targets: Option<&[u32]>) -> Followed {
        Followed {
            attached: HashSet::new(),
            all: targets.is_none(),
        }
    }
}

/// A profiler whose uprobes are attached process by process: it attaches to its targets at the
/// start and to their children as BPF follows them.
pub(crate) trait PerProcess {
    /// The program's `targets` map (`tgid -> 1`).
    fn targets(&self) -> &dyn MapCore;
    fn followed(&mut self) -> &mut Followed;
    /// Attaches the probes to process `pid`; `pending_exec` is its executable when it has not
    /// exec'd it yet (a target started gated), `None` for a child.
    fn attach_process(
        &mut self,
        pid: u32,
        pending_exec: Option<&Path>,
    ) -> Result<(), ProfilerError>;

    /// Adds `pids` to the targets map and attaches to each.
    fn attach_targets(
        &mut self,
        pids: &[u32],
        pending_exec: Option<&Path>,
    ) -> Result<(), ProfilerError> {
        crate::mechanics::maps::add_targets(self.targets(), pids)?;
        for &pid in pids {
            self.attach_process(pid, pending_exec)?;
            self.followed().attached.insert(pid);
        }
        Ok(())
    }

    /// Attaches to the live targets without probes yet (children BPF followed), each once: an
    /// attach that fails is logged and not retried. Nothing when probing every process.
    fn attach_children(&mut self) {
        if self.followed().all {
            return;
        }
        for pid in crate::mechanics::maps::pids_of(self.targets()) {
            if self.followed().attached.insert(pid) && crate::sys::process_alive(pid) {
                if let Err(e) = self.attach_process(pid, None) {
                    tracing::debug!(pid, error = %e, "could not attach to a child");
                }
            }
        }
    }
}

/// Implements [`PerProcess`] for a profiler with a skeleton `skel` (with a `targets` map), a
/// [`Followed`] `followed`, and a method `attach_target(pid, exe)` that attaches to a process.
macro_rules! per_process {
    ($profiler:ty) => {
        impl crate::mechanics::uprobe::PerProcess for $profiler {
            fn targets(&self) -> &dyn libbpf_rs::MapCore {
                &self.skel.maps.targets
            }

            fn followed(&mut self) -> &mut crate::mechanics::uprobe::Followed {
                &mut self.followed
            }

            fn attach_process(
                &mut self,
                pid: u32,
                pending_exec: Option<&std::path::Path>,
            ) -> Result<(), crate::ProfilerError> {
                self.attach_target(pid, pending_exec)
            }
        }
    };
}
pub(crate) use per_process;

/// The [`crate::Profiler`] methods every per-process uprobe profiler answers the same way:
/// its targets are BPF's `targets` map, and each tick attaches probes to the children BPF
/// followed since the last one. Used inside `impl Profiler for …` of a [`per_process!`] type.
macro_rules! per_process_methods {
    () => {
        fn target_pids(&self) -> Vec<u32> {
            crate::mechanics::maps::pids_of(&self.skel.maps.targets)
        }

        fn tick(&mut self) {
            crate::mechanics::uprobe::PerProcess::attach_children(self);
        }
    };
}
pub(crate) use per_process_methods;

/// A function found in an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// Where a uprobe attaches: the offset of its first instruction in the file.
    pub file_offset: u64,
}

/// Defined functions of `path` whose names match the glob `pattern` (`*` and `?`), from the
/// symbol table and the dynamic one, one per address, sorted by name.
pub fn functions_matching(path: &Path, pattern: &str) -> Result<Vec<Function>, ProfilerError> {
    let data = std::fs::read(path)
        .map_err(|e| ProfilerError::Attach(format!("reading {}: {e}", path.display())))?;
    let file = object::File::parse(&*data).map_err(|e| {
        ProfilerError::Attach(format!("{} is not an ELF file: {e}", path.display()))
    })?;
    let mut out: Vec<Function> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, file_offset, _) in defined_functions(&file) {
        if !glob(pattern.as_bytes(), name.as_bytes()) || !seen.insert(file_offset) {
            continue;
        }
        out.push(Function {
            name: name.to_string(),
            file_offset,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The defined functions of an ELF file, from the symbol table and the dynamic one (a function
/// in both comes twice): (name, file offset of its first instruction, size).
pub(crate) fn defined_functions<'a>(
    file: &'a object::File<'a>,
) -> impl Iterator<Item = (&'a str, u64, u64)> + 'a {
    file.symbols()
        .chain(file.dynamic_symbols())
        .filter(|sym| sym.kind() == SymbolKind::Text && sym.is_definition() && sym.address() != 0)
        .filter_map(move |sym| {
            let name = sym.name().ok()?;
            let section = file.section_by_index(sym.section_index()?).ok()?;
            let (offset, _) = section.file_range()?;
            Some((name, sym.address() - section.address() + offset, sym.size()))
        })
}

/// Glob match with `*` (any run) and `?` (any one byte).
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob(b"handle_*", b"handle_request"));
        assert!(glob(b"*alloc", b"malloc"));
        assert!(glob(b"str?py", b"strcpy"));
        assert!(glob(b"counted", b"counted"));
        assert!(!glob(b"counted", b"counted2"));
        assert!(!glob(b"h*x", b"handle"));
        assert!(glob(b"*", b""));
    }

    #[test]
    fn finds_functions_of_this_test_binary() {
        let exe = std::env::current_exe().expect("exe");
        let found = functions_matching(&exe, "main").expect("parse");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].file_offset > 0);
        let libc = resolve_binary(None, "libc").expect("libc is mapped");
        assert!(!functions_matching(&libc, "mallo?")
            .expect("libc")
            .is_empty());
    }
}
