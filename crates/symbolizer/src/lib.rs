//! Host-side symbolization: per-process mapping snapshots, user frames keyed by build ID and file
//! offset, kernel frames through kallsyms, all resolved with blazesym and cached.
//!
//! The key of a user frame is `(build ID, file offset)`, never a process address, so the central
//! symbolizer of the fleet issue can reuse the same keys and the same cache.

mod debugfile;
pub mod fdo;
pub mod interp;
mod maps;
pub mod perfmap;
mod vdso;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use baton_model::frame::KERNEL_MODULE;
use baton_model::{Frame, FrameKind};
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

pub use debugfile::debug_only;
pub use maps::{parse_maps, MapEntry};
pub use perfmap::PerfMap;
pub use vdso::own_vdso_image;

/// A symbol found for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymInfo {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Functions inlined at this address, outermost first, each with its own location.
    pub inlined: Vec<(String, Option<String>, Option<u32>)>,
}

/// An ELF module seen in some process, identified by device, inode and path.
#[derive(Debug, Clone)]
struct Module {
    /// The path as the process sees it.
    path: String,
    /// Where this host can open it (the same path, or through `/proc/PID/root`).
    open_path: PathBuf,
    build_id: Option<String>,
}

/// Counters a caller can export.
#[derive(Debug, Default, Clone, Copy)]
pub struct SymbolizerStats {
    pub frames_resolved: u64,
    pub frames_unknown: u64,
    /// Frames named from a JIT perf map.
    pub frames_jit: u64,
    pub processes_without_maps: u64,
}

/// Resolves frames of the processes on this host. Keep one per agent; its caches are the point.
pub struct HostSymbolizer {
    /// Leave native frames of modules with a build ID unnamed (delayed symbolization: the
    /// server names them by build ID and offset).
    pub defer_by_build_id: bool,
    blaze: Symbolizer,
    procs: HashMap<u32, Vec<(MapEntry, usize)>>,
    modules: Vec<Module>,
    module_index: HashMap<(u64, u64, String, PathBuf), usize>,
    user_cache: HashMap<(usize, u64), Option<SymInfo>>,
    kernel_cache: HashMap<u64, Option<SymInfo>>,
    self_root: Option<(u64, u64)>,
    /// JIT perf maps (`/tmp/perf-PID.map`) of processes that have one.
    perf_maps: HashMap<u32, PerfMap>,
    /// Modules blazesym has opened since it was last rebuilt; see [`HostSymbolizer::trim`].
    opened_since_rebuild: HashSet<usize>,
    /// This kernel's vDSO image, written to a file once so blazesym can read its symbols.
    vdso: vdso::VdsoFile,
    pub stats: SymbolizerStats,
}

/// blazesym keeps every ELF file it opened mapped, with the pages it touched resident. After
/// this many distinct modules it is rebuilt, so a host with churning binaries (builds, deploys)
/// does not grow the agent's memory without bound.
const MAX_OPEN_MODULES: usize = 48;

impl Default for HostSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

fn dev_ino(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl HostSymbolizer {
    pub fn new() -> Self {
        HostSymbolizer {
            defer_by_build_id: false,
            blaze: new_blazesym(),
            procs: HashMap::new(),
            modules: Vec::new(),
            module_index: HashMap::new(),
            user_cache: HashMap::new(),
            kernel_cache: HashMap::new(),
            self_root: dev_ino(Path::new("/proc/self/root")),
            opened_since_rebuild: HashSet::new(),
            perf_maps: HashMap::new(),
            vdso: vdso::VdsoFile::default(),
            stats: SymbolizerStats::default(),
        }
    }

    /// Whether a snapshot of this process's mappings is held.
    pub fn knows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Snapshots the executable mappings of `pid` from `/proc/PID/maps`. Call it while the
    /// process lives: after it exits, its frames are resolved from the last snapshot. Returns
    /// false when the process is already gone (the old snapshot, if any, is kept).
    pub fn observe_process(&mut self, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return false;
        };
        self.observe_maps(pid, &text)
    }

    /// As [`HostSymbolizer::observe_process`], from `/proc/PID/maps` text the caller has read.
    pub fn observe_maps(&mut self, pid: u32, text: &str) -> bool {
        let entries = parse_maps(text);
        if entries.is_empty() {
            // Zombies and kernel threads have no mappings; keep what we had.
            return false;
        }
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let same_root = dev_ino(&root).is_some() && dev_ino(&root) == self.self_root;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let open_path = if same_root || !e.path.starts_with('/') {
                PathBuf::from(&e.path)
            } else {
                root.join(e.path.trim_start_matches('/'))
            };
            let key = (e.dev, e.inode, e.path.clone(), open_path.clone());
            let idx = match self.module_index.get(&key) {
                Some(&i) => i,
                None => {
                    let build_id = if e.path.starts_with('/') {
                        blazesym::helper::read_elf_build_id(&open_path)
                            .ok()
                            .flatten()
                            .map(|b| hex(&b))
                    } else {
                        None
                    };
                    self.modules.push(Module {
                        path: e.path.clone(),
                        open_path,
                        build_id,
                    });
                    self.module_index.insert(key, self.modules.len() - 1);
                    self.modules.len() - 1
                }
            };
            out.push((e, idx));
        }
        self.procs.insert(pid, out);
        true
    }

    /// Drops the snapshot of a process that is gone and no longer needed.
    pub fn forget_process(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.perf_maps.remove(&pid);
    }

    /// Reads (or re-reads, when it grew) the JIT perf map of `pid`, if the process writes one.
    /// Call it at collection time: runtimes write these files as they compile, and they vanish
    /// with the container or the tmpfs. Returns the number of methods known for the pid.
    pub fn refresh_perf_map(&mut self, pid: u32) -> usize {
        let path = perfmap::path_of(pid);
        let Ok(meta) = std::fs::metadata(&path) else {
            return self.perf_maps.get(&pid).map_or(0, PerfMap::len);
        };
        if self
            .perf_maps
            .get(&pid)
            .is_some_and(|m| m.read_len == meta.len())
        {
            return self.perf_maps[&pid].len();
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let m = PerfMap::parse(&text);
                let n = m.len();
                self.perf_maps.insert(pid, m);
                n
            }
            Err(_) => self.perf_maps.get(&pid).map_or(0, PerfMap::len),
        }
    }

    /// A JIT frame for `addr` of `pid`, from its perf map.
    fn jit_frame(&mut self, pid: u32, addr: u64) -> Option<Frame> {
        let name = self.perf_maps.get(&pid)?.lookup(addr)?.to_string();
        self.stats.frames_jit += 1;
        self.stats.frames_resolved += 1;
        Some(Frame {
            kind: FrameKind::Jit,
            function: Some(name),
            module: "[jit]".into(),
            build_id: None,
            address: addr,
            file: None,
            line: None,
        })
    }

    /// Bounds memory: drops cached symbols of modules no known process maps any more, and
    /// rebuilds blazesym (unmapping every file it holds) once it has opened too many modules.
    /// Call it once per window.
    pub fn trim(&mut self) {
        let live: HashSet<usize> = self.procs.values().flatten().map(|(_, idx)| *idx).collect();
        self.user_cache.retain(|(idx, _), _| live.contains(idx));
        if self.opened_since_rebuild.len() > MAX_OPEN_MODULES {
            self.blaze = new_blazesym();
            self.opened_since_rebuild.clear();
        }
    }

    /// Pids with a snapshot.
    pub fn known_pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// Resolves user addresses (leaf first) of `pid` into frames. Return addresses (all but the
    /// leaf) are looked up one byte back, so a call at the very end of a function is credited to
    /// its caller's call site, as perf does.
    pub fn user_frames(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let Some(maps) = self.procs.get(&pid) else {
            self.stats.processes_without_maps += 1;
            self.stats.frames_unknown += addrs.len() as u64;
            return addrs
                .iter()
                .map(|&a| unknown_frame("[unknown]", None, a))
                .collect();
        };
        // Normalize: address -> (module, file offset).
        let mut norm: Vec<Option<(usize, u64)>> = Vec::with_capacity(addrs.len());
        for (i, &a) in addrs.iter().enumerate() {
            let a = if i > 0 { a.saturating_sub(1) } else { a };
            let hit = maps
                .iter()
                .find(|(m, _)| a >= m.start && a < m.end)
                .map(|(m, idx)| (*idx, a - m.start + m.file_offset));
            norm.push(hit);
        }
        // Resolve what is not cached yet, one batch per module.
        let mut missing: HashMap<usize, Vec<u64>> = HashMap::new();
        for (idx, off) in norm.iter().flatten() {
            if !self.user_cache.contains_key(&(*idx, *off)) {
                let v = missing.entry(*idx).or_default();
                if !v.contains(off) {
                    v.push(*off);
                }
            }
        }
        for (idx, offs) in missing {
            let module = &self.modules[idx];
            let resolved = if self.defer_by_build_id
                && module.build_id.is_some()
                && module.path.starts_with('/')
            {
                vec![None; offs.len()]
            } else if module.path.starts_with('/') {
                self.opened_since_rebuild.insert(idx);
                self.resolve_elf(&module.open_path, &module.path, &offs)
            } else if module.path == "[vdso]" {
                match self.vdso.path() {
                    Some(p) => self.resolve_elf(&p, "[vdso]", &offs),
                    None => vec![None; offs.len()],
                }
            } else {
                vec![None; offs.len()]
            };
            for (off, s) in offs.into_iter().zip(resolved) {
                self.user_cache.insert((idx, off), s);
            }
        }
        norm.iter()
            .zip(addrs)
            .enumerate()
            .flat_map(|(i, (n, &a))| {
                // Interpreter frames an unwinder merged in.
                if let Some(f) = interp::frame(a) {
                    self.stats.frames_resolved += 1;
                    return vec![f];
                }
                // Code outside any file (anonymous or memfd mappings) may be JIT code.
                let lookup = if i > 0 { a.saturating_sub(1) } else { a };
                let outside_files = n.is_none_or(|(idx, _)| {
                    !self.modules[idx].path.starts_with('/')
                        || self.modules[idx].path.starts_with("/memfd:")
                });
                if outside_files {
                    if let Some(f) = self.jit_frame(pid, lookup) {
                        return vec![f];
                    }
                }
                self.native_frames(*n, a)
            })
            .collect()
    }

    /// The frame of a native address, preceded (leaf first) by the functions inlined there.
    fn native_frames(&mut self, n: Option<(usize, u64)>, a: u64) -> Vec<Frame> {
        let Some((idx, off)) = n else {
            self.stats.frames_unknown += 1;
            return vec![unknown_frame("[unknown]", None, a)];
        };
        let m = &self.modules[idx];
        let Some(Some(s)) = self.user_cache.get(&(idx, off)) else {
            self.stats.frames_unknown += 1;
            return vec![unknown_frame(&m.path, m.build_id.clone(), off)];
        };
        let frame = |kind, function: &str, file: &Option<String>, line| Frame {
            kind,
            function: Some(function.to_string()),
            module: m.path.clone(),
            build_id: m.build_id.clone(),
            address: off,
            file: file.clone(),
            line,
        };
        let mut out: Vec<Frame> = s
            .inlined
            .iter()
            .rev()
            .map(|(name, file, line)| frame(FrameKind::Inlined, name, file, *line))
            .collect();
        out.push(frame(FrameKind::User, &s.function, &s.file, s.line));
        self.stats.frames_resolved += out.len() as u64;
        out
    }

    fn resolve_elf(&self, open_path: &Path, module: &str, offs: &[u64]) -> Vec<Option<SymInfo>> {
        resolve_elf(&self.blaze, open_path, module, offs, false)
    }

    /// Resolves kernel addresses (leaf first) through kallsyms.
    pub fn kernel_frames(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let adjusted: Vec<u64> = addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| if i > 0 { a.saturating_sub(1) } else { a })
            .collect();
        let mut missing: Vec<u64> = adjusted
            .iter()
            .copied()
            .filter(|a| !self.kernel_cache.contains_key(a))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let src = Source::Kernel(Kernel {
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Default::default()
            });
            let res = match self.blaze.symbolize(&src, Input::AbsAddr(&missing)) {
                Ok(v) => v.into_iter().map(sym_info).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "kernel symbolization failed");
                    vec![None; missing.len()]
                }
            };
            for (a, s) in missing.into_iter().zip(res) {
                self.kernel_cache.insert(a, s);
            }
        }
        adjusted
            .iter()
            .map(|a| {
                let s = self.kernel_cache.get(a).cloned().flatten();
                if s.is_some() {
                    self.stats.frames_resolved += 1;
                } else {
                    self.stats.frames_unknown += 1;
                }
                Frame {
                    kind: FrameKind::Kernel,
                    function: s.as_ref().map(|s| s.function.clone()),
                    module: KERNEL_MODULE.to_string(),
                    build_id: None,
                    address: *a,
                    file: None,
                    line: None,
                }
            })
            .collect()
    }
}

/// Names from the ELF symbol table, which carries full (mangled, then demangled) paths such
/// as `crate::module::function`; file, line and inlined functions from DWARF. DWARF alone is not
/// enough for names: with line-tables-only debug info its subprogram names lack the namespace
/// path. When the symbol table has nothing (a stripped binary), the DWARF name is used.
/// `addrs` are file offsets, or virtual addresses (as in the ELF's program headers) with
/// `virtual_addrs`.
pub(crate) fn resolve_elf(
    blaze: &Symbolizer,
    open_path: &Path,
    module: &str,
    addrs: &[u64],
    virtual_addrs: bool,
) -> Vec<Option<SymInfo>> {
    let run = |debug_syms: bool| -> Vec<Option<SymInfo>> {
        let mut elf = Elf::new(open_path.to_path_buf());
        elf.debug_syms = debug_syms;
        let input = if virtual_addrs {
            Input::VirtOffset(addrs)
        } else {
            Input::FileOffset(addrs)
        };
        match blaze.symbolize(&Source::Elf(elf), input) {
            Ok(v) => v.into_iter().map(sym_info).collect(),
            Err(e) => {
                tracing::debug!(module, error = %e, debug_syms, "symbolization failed");
                vec![None; addrs.len()]
            }
        }
    };
    let from_symtab = run(false);
    let from_dwarf = run(true);
    from_symtab
        .into_iter()
        .zip(from_dwarf)
        .map(|(sym, dwarf)| match (sym, dwarf) {
            (Some(mut s), Some(d)) => {
                s.file = d.file;
                s.line = d.line;
                s.inlined = d.inlined;
                Some(s)
            }
            (s, d) => s.or(d),
        })
        .collect()
}

/// Symbolizes addresses of ELF files named by path: the server's delayed symbolization (by
/// build ID, once the file is in its debug-info store) and `baton symbolize`. blazesym keeps
/// each file's parsed symbols and DWARF between calls, so keep one.
pub struct ElfSymbolizer {
    blaze: Symbolizer,
}

impl Default for ElfSymbolizer {
    fn default() -> Self {
        ElfSymbolizer {
            blaze: new_blazesym(),
        }
    }
}

impl ElfSymbolizer {
    /// Resolves file offsets of the binary whose build ID `path` has: `path` may be the
    /// binary itself or a separate debug file (`objcopy --only-keep-debug`, `/usr/lib/debug`),
    /// whose sections hold no code, so offsets go through the program headers, which both keep.
    pub fn file_offsets(&self, path: &Path, offsets: &[u64]) -> Vec<Option<SymInfo>> {
        let Some(segments) = load_segments(path) else {
            return resolve_elf(
                &self.blaze,
                path,
                &path.display().to_string(),
                offsets,
                false,
            );
        };
        let vaddrs: Vec<Option<u64>> = offsets
            .iter()
            .map(|&off| {
                segments
                    .iter()
                    .find(|(o, _, sz)| off >= *o && off < o + sz)
                    .map(|(o, v, _)| off - o + v)
            })
            .collect();
        let known: Vec<u64> = vaddrs.iter().flatten().copied().collect();
        let mut resolved =
            resolve_elf(&self.blaze, path, &path.display().to_string(), &known, true).into_iter();
        vaddrs
            .into_iter()
            .map(|v| v.and_then(|_| resolved.next().flatten()))
            .collect()
    }

    /// Resolves virtual addresses of `path`, as `addr2line -e` and `llvm-symbolizer --obj` do.
    pub fn virtual_addrs(&self, path: &Path, addrs: &[u64]) -> Vec<Option<SymInfo>> {
        resolve_elf(&self.blaze, path, &path.display().to_string(), addrs, true)
    }
}

/// The executable `PT_LOAD` segments of an ELF file: (file offset, virtual address, size).
///
/// A separate debug file keeps the program headers' addresses but not their file offsets
/// (they read 0, with no file size). There the offsets are taken as the addresses less the
/// first segment's, which is how linkers lay out shared objects and executables (a code
/// segment's offset equals its address, less the image base). An uploaded copy of the binary
/// itself has exact offsets.
fn load_segments(path: &Path) -> Option<Vec<(u64, u64, u64)>> {
    use object::read::elf::{FileHeader, ProgramHeader};
    use std::io::Read;
    let mut head = Vec::with_capacity(1 << 16);
    std::fs::File::open(path)
        .ok()?
        .take(1 << 16)
        .read_to_end(&mut head)
        .ok()?;
    let parse = |data: &[u8]| -> Option<Vec<(u64, u64, u64, u64)>> {
        let header = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
        let endian = header.endian().ok()?;
        Some(
            header
                .program_headers(endian, data)
                .ok()?
                .iter()
                .filter(|p| p.p_type(endian) == object::elf::PT_LOAD)
                .map(|p| {
                    (
                        p.p_offset(endian),
                        p.p_vaddr(endian),
                        p.p_filesz(endian),
                        p.p_memsz(endian) | u64::from(p.p_flags(endian) & object::elf::PF_X) << 63,
                    )
                })
                .collect(),
        )
    };
    let loads = match parse(&head) {
        Some(l) => l,
        None => parse(&std::fs::read(path).ok()?)?,
    };
    let base = loads.iter().map(|l| l.1).min()?;
    let exec = |l: &&(u64, u64, u64, u64)| l.3 >> 63 == 1;
    let debug_only = loads.iter().filter(exec).all(|l| l.2 == 0);
    let segs: Vec<(u64, u64, u64)> = loads
        .iter()
        .filter(exec)
        .map(|&(off, vaddr, filesz, memsz)| {
            if debug_only {
                (vaddr - base, vaddr, memsz & !(1 << 63))
            } else {
                (off, vaddr, filesz)
            }
        })
        .collect();
    (!segs.is_empty()).then_some(segs)
}

/// The GNU build ID of an ELF file, in hex.
pub fn build_id_of(path: &Path) -> Option<String> {
    blazesym::helper::read_elf_build_id(path)
        .ok()
        .flatten()
        .map(|b| hex(&b))
}

fn new_blazesym() -> Symbolizer {
    Symbolizer::builder()
        .enable_demangling(true)
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .build()
}

fn unknown_frame(module: &str, build_id: Option<String>, address: u64) -> Frame {
    Frame {
        kind: FrameKind::User,
        function: None,
        module: module.to_string(),
        build_id,
        address,
        file: None,
        line: None,
    }
}

fn sym_info(s: Symbolized<'_>) -> Option<SymInfo> {
    match s {
        Symbolized::Sym(sym) => {
            let (file, line) = match &sym.code_info {
                Some(ci) => (Some(ci.to_path().display().to_string()), ci.line),
                None => (None, None),
            };
            let inlined = sym
                .inlined
                .iter()
                .map(|f| {
                    let (file, line) = match &f.code_info {
                        Some(ci) => (Some(ci.to_path().display().to_string()), ci.line),
                        None => (None, None),
                    };
                    (f.name.to_string(), file, line)
                })
                .collect();
            Some(SymInfo {
                function: sym.name.into_owned(),
                file,
                line,
                inlined,
            })
        }
        Symbolized::Unknown(_) => None,
    }
}

/// Lower-case hex of a byte string, as build IDs are written.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_known_function() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn resolves_own_function_by_build_id_and_offset() {
        let pid = std::process::id();
        let mut s = HostSymbolizer::new();
        assert!(s.observe_process(pid));
        let addr = a_known_function as *const () as u64;
        let frames = s.user_frames(pid, &[addr]);
        // Code inlined at the function's first instruction (black_box) comes first, as frames
        // of its own at the same offset; the function itself is the last frame.
        let f = frames.last().expect("a frame");
        assert_eq!(f.kind, FrameKind::User);
        for inl in &frames[..frames.len() - 1] {
            assert_eq!(inl.kind, FrameKind::Inlined, "{frames:?}");
            assert_eq!((&inl.module, inl.address), (&f.module, f.address));
        }
        let name = f.function.as_deref().unwrap_or("");
        // Demangled: the Rust path, without the `17h…E` hash suffix of the mangled symbol.
        assert_eq!(name, "baton_symbolizer::tests::a_known_function");
        // File and line come from DWARF (the workspace builds with line tables). The first
        // instruction may belong to inlined code (black_box), so the file is not checked here.
        assert!(
            f.file.as_deref().is_some_and(|p| p.ends_with(".rs")),
            "file: {:?}",
            f.file
        );
        assert!(f.line.is_some());
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            std::fs::canonicalize(&f.module).unwrap(),
            std::fs::canonicalize(exe).unwrap()
        );
        assert!(f.build_id.is_some(), "the test binary has a GNU build ID");
        assert!(
            f.address < std::fs::metadata(&f.module).unwrap().len(),
            "address is a file offset"
        );
    }

    #[test]
    fn trim_drops_symbols_of_forgotten_processes() {
        let pid = std::process::id();
        let mut s = HostSymbolizer::new();
        s.observe_process(pid);
        s.user_frames(pid, &[a_known_function as *const () as u64]);
        s.trim();
        assert_eq!(s.user_cache.len(), 1, "a live process keeps its symbols");
        s.forget_process(pid);
        s.trim();
        assert!(s.user_cache.is_empty());
    }

    #[test]
    fn unmapped_addresses_stay_as_unknown_frames() {
        let pid = std::process::id();
        let mut s = HostSymbolizer::new();
        s.observe_process(pid);
        let frames = s.user_frames(pid, &[0x10]);
        assert_eq!(frames[0].function, None);
        assert_eq!(frames[0].display_name(), "[unknown] [unknown]+0x10");
    }
}
