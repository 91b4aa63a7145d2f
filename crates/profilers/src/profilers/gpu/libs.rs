//! Where the CUDA libraries are: the ones a process maps, the ones an executable about to start
//! will load (its `DT_NEEDED` entries, searched as the dynamic loader searches), and the ones
//! installed on this host. Also whether the host has an NVIDIA driver at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object::read::elf::{Dyn as _, ElfFile64};

/// Which CUDA library a file is, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Library {
    /// `libcudart.so*`: the runtime API.
    Runtime,
    /// `libcuda.so*`: the driver API.
    Driver,
}

/// The CUDA library `path` names, if any.
pub(crate) fn library_of(path: &Path) -> Option<Library> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with("libcudart.so") {
        Some(Library::Runtime)
    } else if name.starts_with("libcuda.so") {
        Some(Library::Driver)
    } else {
        None
    }
}

/// The CUDA libraries process `pid` maps, as paths through `/proc/PID/root` (so processes in
/// containers work), and its executable (which may link the runtime statically).
pub(crate) fn mapped_by(pid: u32, maps: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        let p = Path::new(path);
        if library_of(p).is_some() {
            let rooted = rooted(pid, p);
            if !out.contains(&rooted) {
                out.push(rooted);
            }
        }
    }
    out
}

fn rooted(pid: u32, path: &Path) -> PathBuf {
    let r = PathBuf::from(format!("/proc/{pid}/root{}", path.display()));
    if r.exists() {
        r
    } else {
        path.to_path_buf()
    }
}

/// The CUDA libraries executable `exe` names in `DT_NEEDED`, found as the dynamic loader finds
/// them: `DT_RPATH` (without `DT_RUNPATH`), `ld_library_path`, `DT_RUNPATH`, the loader's
/// cache, then the default directories. `$ORIGIN` is the executable's directory.
pub(crate) fn needed_by(exe: &Path, ld_library_path: Option<&str>) -> Vec<PathBuf> {
    let Ok(data) = std::fs::read(exe) else {
        return Vec::new();
    };
    let Ok(file) = ElfFile64::<object::Endianness>::parse(&*data) else {
        return Vec::new();
    };
    let endian = file.endian();
    let sections = file.elf_section_table();
    let Ok(Some((dyns, link))) = sections.dynamic(endian, &*data) else {
        return Vec::new();
    };
    let Ok(strings) = sections.strings(endian, &*data, link) else {
        return Vec::new();
    };
    let origin = exe
        .parent()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .to_string();
    let (mut needed, mut rpath, mut runpath) = (Vec::new(), Vec::new(), Vec::new());
    for d in dyns {
        let Some(tag) = d.tag32(endian) else { continue };
        let Ok(s) = d.string(endian, strings) else {
            continue;
        };
        let s = String::from_utf8_lossy(s).replace("$ORIGIN", &origin);
        match tag {
            object::elf::DT_NEEDED => needed.push(s),
            object::elf::DT_RPATH => rpath.extend(s.split(':').map(str::to_string)),
            object::elf::DT_RUNPATH => runpath.extend(s.split(':').map(str::to_string)),
            _ => {}
        }
    }
    let mut dirs: Vec<String> = Vec::new();
    if runpath.is_empty() {
        dirs.extend(rpath);
    }
    dirs.extend(
        ld_library_path
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    dirs.extend(runpath);
    let cache = loader_cache();
    let mut out = Vec::new();
    for name in needed {
        if library_of(Path::new(&name)).is_none() {
            continue;
        }
        let found = dirs
            .iter()
            .map(|d| Path::new(d).join(&name))
            .find(|p| p.exists())
            .or_else(|| cache.get(&name).cloned())
            .or_else(|| {
                DEFAULT_DIRS
                    .iter()
                    .map(|d| Path::new(d).join(&name))
                    .find(|p| p.exists())
            });
        out.extend(found);
    }
    out
}

/// Where the loader looks last, and where CUDA installs itself.
const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/cuda/lib64",
    "/usr/local/nvidia/lib64",
];

/// The loader's cache (`ldconfig -p`): library name to path.
fn loader_cache() -> HashMap<String, PathBuf> {
    let Ok(out) = std::process::Command::new("ldconfig").arg("-p").output() else {
        return HashMap::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = HashMap::new();
    for line in text.lines().skip(1) {
        // "	libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1"
        let Some((left, path)) = line.trim().split_once(" => ") else {
            continue;
        };
        if !left.contains("x86-64") {
            continue;
        }
        let name = left.split_whitespace().next().unwrap_or_default();
        map.entry(name.to_string())
            .or_insert_with(|| PathBuf::from(path));
    }
    map
}

/// The CUDA libraries installed on this host, for probes on every process: `libcudart.so.*` and
/// `libcuda.so.1` from the loader's cache and the default directories.
pub(crate) fn installed() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (name, path) in loader_cache() {
        if library_of(Path::new(&name)).is_some() && !out.contains(&path) {
            out.push(path);
        }
    }
    for d in DEFAULT_DIRS {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let versioned = name.starts_with("libcudart.so.") || name == "libcuda.so.1";
            if versioned && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Why this host cannot run the CUDA probes everywhere, if it cannot: no NVIDIA kernel driver
/// and no CUDA library installed. A process that loads CUDA libraries from elsewhere can still
/// be profiled by pid.
pub(crate) fn host_unavailable() -> Option<String> {
    if Path::new("/proc/driver/nvidia").exists() || !installed().is_empty() {
        return None;
    }
    Some(
        "no NVIDIA driver (no /proc/driver/nvidia, and no libcuda.so.1 or libcudart.so in the \
         loader's cache or /usr/local/cuda); a process that loads CUDA libraries of its own can \
         still be profiled by pid"
            .into(),
    )
}

/// Defined functions of an ELF file by name, and the symbol at a file offset: one parse per
/// file (by device and inode, however many paths reach it), kept.
#[derive(Default)]
pub(crate) struct Symbols {
    files: HashMap<(u64, u64), FileSymbols>,
}

#[derive(Default)]
struct FileSymbols {
    /// (file offset, size, name), sorted by offset, then name.
    functions: Vec<(u64, u64, String)>,
}

impl Symbols {
    fn file(&mut self, path: &Path) -> &FileSymbols {
        use std::os::unix::fs::MetadataExt;
        let key = std::fs::metadata(path).map_or((0, 0), |m| (m.dev(), m.ino()));
        self.files
            .entry(key)
            .or_insert_with(|| read_symbols(path).unwrap_or_default())
    }

    /// The file offset of function `name` in `path`.
    pub(crate) fn offset_of(&mut self, path: &Path, name: &str) -> Option<u64> {
        self.file(path)
            .functions
            .iter()
            .find(|(_, _, n)| n == name)
            .map(|(o, _, _)| *o)
    }

    /// The function of `path` that covers file offset `offset`.
    pub(crate) fn name_at(&mut self, path: &Path, offset: u64) -> Option<String> {
        let f = &self.file(path).functions;
        let i = f.partition_point(|(o, _, _)| *o <= offset);
        let (start, size, name) = f.get(i.checked_sub(1)?)?;
        (offset < start + (*size).max(1)).then(|| name.clone())
    }
}

fn read_symbols(path: &Path) -> Option<FileSymbols> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let mut functions: Vec<(u64, u64, String)> = crate::mechanics::uprobe::defined_functions(&file)
        .map(|(name, offset, size)| (offset, size, name.to_string()))
        .collect();
    // Aliases (several names at one address) are all kept: `offset_of` finds any of them.
    functions.sort();
    functions.dedup();
    Some(FileSymbols { functions })
}

/// The file and file offset address `addr` of process `pid` lies at.
pub(crate) fn file_offset_of(pid: u32, addr: u64) -> Option<(PathBuf, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let range = parts.next()?;
        let _perms = parts.next()?;
        let offset = u64::from_str_radix(parts.next()?, 16).ok()?;
        let path = parts.nth(2)?;
        let (start, end) = range.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        if (start..end).contains(&addr) && path.starts_with('/') {
            return Some((rooted(pid, Path::new(path)), addr - start + offset));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_cuda_libraries() {
        assert_eq!(
            library_of(Path::new("/usr/lib/libcudart.so.12.4.99")),
            Some(Library::Runtime)
        );
        assert_eq!(
            library_of(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1")),
            Some(Library::Driver)
        );
        assert_eq!(library_of(Path::new("/usr/lib/libcudnn.so.9")), None);
        let maps = "7f00-7f10 r-xp 00000000 08:01 1 /opt/x/libcudart.so.12\n\
                    7f10-7f20 r-xp 00000000 08:01 2 /usr/lib/libc.so.6\n";
        let found = mapped_by(u32::MAX, maps);
        assert_eq!(found, vec![PathBuf::from("/opt/x/libcudart.so.12")]);
    }

    #[test]
    fn finds_this_binarys_own_functions_by_name_and_offset() {
        let exe = std::env::current_exe().expect("exe");
        let mut s = Symbols::default();
        let off = s.offset_of(&exe, "main").expect("main");
        assert_eq!(s.name_at(&exe, off).as_deref(), Some("main"));
        assert!(needed_by(&exe, None).is_empty(), "this test links no CUDA");
    }
}
