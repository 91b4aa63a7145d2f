//! Baton's preloadable allocation sampler (`baton_malloc.c`, built by build.rs and embedded
//! here): where it is installed, how a command is started with it, and which processes load it.
//!
//! The library samples glibc allocations by bytes inside the process and fires the USDT probes
//! `baton:alloc` and `baton:free` for sampled allocations only, which the malloc profiler's
//! default mode attaches to. It is written out once to a stable path (`/usr/local/lib/baton/`
//! by default), so services can be started with it (`LD_PRELOAD`) from a systemd drop-in or a
//! container's environment.

use std::path::{Path, PathBuf};

/// The glibc sampler's bytes.
pub static MALLOC_LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libbaton_malloc.so"));

/// Its file name, wherever it is installed.
pub const MALLOC_LIBRARY_NAME: &str = "libbaton_malloc.so";

/// Where `baton` installs it unless told otherwise.
pub const DEFAULT_DIR: &str = "/usr/local/lib/baton";

/// The environment variable that sets the sampling mean in bytes (0: every allocation).
pub const SAMPLE_BYTES_ENV: &str = "BATON_MALLOC_SAMPLE_BYTES";

/// The sampling mean the library uses when the environment does not set one.
pub const DEFAULT_SAMPLE_BYTES: u64 = 512 * 1024;

/// Writes the library into `dir` (the default directory when `None`) unless the same bytes are
/// there already, and returns its path. The file is replaced atomically (a new file renamed over
/// the old), so processes that map the old one keep running.
pub fn install(dir: Option<&Path>) -> std::io::Result<PathBuf> {
    let dir = dir.unwrap_or(Path::new(DEFAULT_DIR));
    let path = dir.join(MALLOC_LIBRARY_NAME);
    if std::fs::read(&path).is_ok_and(|b| b == MALLOC_LIBRARY) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{MALLOC_LIBRARY_NAME}.{}", std::process::id()));
    std::fs::write(&tmp, MALLOC_LIBRARY)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// `LD_PRELOAD` for a command started with the library at `lib`: the library first, then
/// whatever the environment preloads already.
pub fn ld_preload(lib: &Path, existing: Option<&str>) -> String {
    match existing.filter(|e| !e.trim().is_empty()) {
        Some(e) if e.split([':', ' ']).any(|x| Path::new(x) == lib) => e.to_string(),
        Some(e) => format!("{}:{e}", lib.display()),
        None => lib.display().to_string(),
    }
}

/// Whether a mapped file is one of Baton's sampling libraries (the glibc sampler, or the
/// jemalloc shim).
fn is_sampler(path: &str) -> bool {
    Path::new(path.trim_end_matches(" (deleted)"))
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libbaton_malloc") || n.starts_with("libbaton_jemalloc"))
}

/// The sampling library process `pid` maps, as a path this process can open (through
/// `/proc/PID/root`, or `/proc/PID/map_files` when the file was replaced since).
pub fn mapped_sampler(pid: u32) -> Option<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    sampler_in_maps(pid, &maps)
}

fn sampler_in_maps(pid: u32, maps: &str) -> Option<PathBuf> {
    maps.lines().find_map(|l| {
        let mut parts = l.splitn(6, ' ');
        let range = parts.next()?;
        let path = parts.nth(4)?.trim_start();
        if !path.starts_with('/') || !is_sampler(path) {
            return None;
        }
        if path.ends_with(" (deleted)") {
            return Some(PathBuf::from(format!("/proc/{pid}/map_files/{range}")));
        }
        let rooted = PathBuf::from(format!("/proc/{pid}/root{path}"));
        Some(if rooted.exists() {
            rooted
        } else {
            PathBuf::from(path)
        })
    })
}

/// Whether process `pid` maps a libc (a static binary does not: its allocator cannot be
/// hooked from outside).
pub fn maps_libc(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_whitespace()
                .nth(5)
                .and_then(|p| Path::new(p).file_name()?.to_str())
                .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
    })
}

/// Whether the ELF executable at `path` is dynamically linked (it names a program
/// interpreter, so `LD_PRELOAD` applies to it). Anything unreadable or not 64-bit ELF counts as
/// dynamic: the check only turns away what is certainly static.
pub fn is_dynamic(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return true;
    };
    let field = |off: usize, len: usize| -> Option<u64> {
        let b = data.get(off..off + len)?;
        Some(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    // 64-bit (class 2), little-endian (data 1) ELF only.
    if !data.starts_with(b"\x7fELF") || data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        return true;
    };
    const PT_INTERP: u64 = 3;
    (0..phnum).any(|i| {
        let at = phoff as usize + (i * phentsize) as usize;
        field(at, 4) == Some(PT_INTERP)
    }) || phnum == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_goes_first_in_ld_preload_and_only_once() {
        let lib = Path::new("/usr/local/lib/baton/libbaton_malloc.so");
        assert_eq!(ld_preload(lib, None), lib.display().to_string());
        assert_eq!(
            ld_preload(lib, Some("/x/liba.so")),
            format!("{}:/x/liba.so", lib.display())
        );
        let twice = format!("/x/liba.so:{}", lib.display());
        assert_eq!(ld_preload(lib, Some(&twice)), twice);
    }

    #[test]
    fn a_sampler_is_found_in_maps_even_when_replaced() {
        let maps = "\
7f00-7f10 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f20-7f30 r-xp 00001000 08:01 2 /usr/local/lib/baton/libbaton_malloc.so
";
        let p = sampler_in_maps(1, maps).expect("found");
        assert!(
            p.ends_with("usr/local/lib/baton/libbaton_malloc.so"),
            "{p:?}"
        );
        let deleted = "7f20-7f30 r-xp 00001000 08:01 2 /opt/libbaton_malloc.so (deleted)\n";
        assert_eq!(
            sampler_in_maps(7, deleted),
            Some(PathBuf::from("/proc/7/map_files/7f20-7f30"))
        );
        assert_eq!(
            sampler_in_maps(1, "7f00-7f10 r-xp 0 08:01 1 /lib/libc.so.6\n"),
            None
        );
    }

    #[test]
    fn a_static_executable_is_told_from_a_dynamic_one() {
        let dir = std::env::temp_dir().join(format!("baton-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let src = dir.join("m.c");
        std::fs::write(&src, "int main(void) { return 0; }\n").expect("write");
        for (flags, dynamic) in [(&[][..], true), (&["-static"][..], false)] {
            let out = dir.join(if dynamic { "dyn" } else { "static" });
            let st = std::process::Command::new("cc")
                .args(flags)
                .arg("-o")
                .arg(&out)
                .arg(&src)
                .status()
                .expect("cc");
            assert!(st.success());
            assert_eq!(is_dynamic(&out), dynamic, "{flags:?}");
        }
        assert!(is_dynamic(Path::new("/nonexistent")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_embedded_library_has_the_probes() {
        let text = String::from_utf8_lossy(MALLOC_LIBRARY);
        assert!(MALLOC_LIBRARY.starts_with(b"\x7fELF"));
        assert!(text.contains("baton_alloc_semaphore") && text.contains("stapsdt"));
    }
}
