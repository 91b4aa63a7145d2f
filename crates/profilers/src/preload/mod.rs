//! Baton's preloadable allocation samplers, built by build.rs and embedded here: where they are
//! installed, how a command is started with them, and which processes load them.
//!
//! - `baton_malloc.c` samples glibc allocations by bytes inside the process.
//! - `baton_jemalloc.c` reports the allocations jemalloc samples itself (`prof`,
//!   `lg_prof_sample`), for programs linked with `libjemalloc.so`.
//!
//! Both fire the USDT probes `baton:alloc(ptr, size, mean)` and `baton:free(ptr)` for sampled
//! allocations only, which the malloc profiler's default mode attaches to. It is written out once to a stable path (`/usr/local/lib/baton/`
//! by default), so services can be started with it (`LD_PRELOAD`) from a systemd drop-in or a
//! container's environment.

use std::path::{Path, PathBuf};

/// The glibc sampler's bytes.
pub static MALLOC_LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libbaton_malloc.so"));

/// Its file name, wherever it is installed.
pub const MALLOC_LIBRARY_NAME: &str = "libbaton_malloc.so";

/// The jemalloc shim's bytes: it reports the allocations jemalloc samples itself.
pub static JEMALLOC_LIBRARY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/libbaton_jemalloc.so"));

/// Its file name, wherever it is installed.
pub const JEMALLOC_LIBRARY_NAME: &str = "libbaton_jemalloc.so";

/// Where `baton` installs them unless told otherwise.
pub const DEFAULT_DIR: &str = "/usr/local/lib/baton";

/// The environment variable that sets the sampling mean in bytes (0: every allocation).
pub const SAMPLE_BYTES_ENV: &str = "BATON_MALLOC_SAMPLE_BYTES";

/// The sampling mean the library uses when the environment does not set one.
pub const DEFAULT_SAMPLE_BYTES: u64 = 2 * 1024 * 1024;

/// Writes both libraries into `dir` (the default directory when `None`) unless the same bytes
/// are there already, and returns the glibc sampler's path. A file is replaced atomically (a new
/// file renamed over the old), so processes that map the old one keep running.
pub fn install(dir: Option<&Path>) -> std::io::Result<PathBuf> {
    let dir = dir.unwrap_or(Path::new(DEFAULT_DIR));
    install_one(dir, JEMALLOC_LIBRARY_NAME, JEMALLOC_LIBRARY)?;
    install_one(dir, MALLOC_LIBRARY_NAME, MALLOC_LIBRARY)
}

/// The installed jemalloc shim's path (installing both libraries if needed).
pub fn install_jemalloc(dir: Option<&Path>) -> std::io::Result<PathBuf> {
    let glibc = install(dir)?;
    Ok(glibc.with_file_name(JEMALLOC_LIBRARY_NAME))
}

fn install_one(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|b| b == bytes) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Whether the executable at `path` links jemalloc dynamically (it names `libjemalloc.so` as a
/// needed library), so its allocations are jemalloc's and the jemalloc shim reports them.
pub fn links_jemalloc(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(14).any(|w| w == b"libjemalloc.so"))
}

/// `MALLOC_CONF` that turns jemalloc's own sampling on at a mean of about `sample_bytes` (a
/// power of two: jemalloc takes its log), after whatever the environment sets.
pub fn jemalloc_conf(sample_bytes: u64, existing: Option<&str>) -> String {
    let lg = if sample_bytes <= 1 {
        0
    } else {
        (sample_bytes as f64).log2().round() as u32
    };
    let ours = format!("prof:true,prof_active:true,lg_prof_sample:{lg}");
    match existing.filter(|e| !e.trim().is_empty()) {
        Some(e) => format!("{e},{ours}"),
        None => ours,
    }
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
    fn jemalloc_samples_at_the_nearest_power_of_two_after_the_environment() {
        assert_eq!(
            jemalloc_conf(524_288, None),
            "prof:true,prof_active:true,lg_prof_sample:19"
        );
        assert_eq!(
            jemalloc_conf(0, Some("narenas:2")),
            "narenas:2,prof:true,prof_active:true,lg_prof_sample:0"
        );
        assert!(jemalloc_conf(65_000, None).ends_with(":16"));
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
