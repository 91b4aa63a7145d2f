//! Compiles each BPF program under `src/bpf/` and generates its Rust skeleton, and builds the
//! preloadable allocation samplers under `src/preload/` (embedded in the profilers crate).

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // Debian keeps <asm/types.h> under the multiarch include directory.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    // Every `src/bpf/NAME.bpf.c` becomes `NAME.skel.rs`: a new profiler needs no edit here.
    let mut names: Vec<String> = std::fs::read_dir("src/bpf")
        .expect("src/bpf exists")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".bpf.c").map(str::to_string)
        })
        .collect();
    names.sort();
    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-changed=src/bpf/common.h");
    for name in &names {
        let src = format!("src/bpf/{name}.bpf.c");
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .clang_args([multiarch.as_str(), "-Wall", "-O2"])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {src} failed (is clang installed?): {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    syscall_names(&out, &arch);
    preload_libraries(&out);
}

/// Builds each `src/preload/NAME.c` into `libNAME.so`: position-independent, with frame
/// pointers (the BPF side walks the stack from inside it). Sibling calls stay optimised, so the
/// fast paths jump straight into the allocator; the sources keep their sampling calls out of tail
/// position themselves, so the stack always shows the entry point the program called.
fn preload_libraries(out: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/preload");
    let mut sources: Vec<_> = std::fs::read_dir("src/preload")
        .expect("src/preload exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    for src in sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a C file name");
        let lib = out.join(format!("lib{stem}.so"));
        let status = std::process::Command::new("clang")
            .args(["-O2", "-g", "-fPIC", "-shared", "-fno-omit-frame-pointer"])
            .args(["-fvisibility=hidden", "-Wall", "-Wextra", "-Werror"])
            .arg("-o")
            .arg(&lib)
            .arg(&src)
            .args(["-ldl", "-lm", "-lpthread"])
            .status()
            .unwrap_or_else(|e| panic!("running clang for {}: {e}", src.display()));
        assert!(status.success(), "building {} failed", src.display());
        println!("cargo:rerun-if-changed={}", src.display());
    }
}

/// Writes `syscall_names.rs`, the syscall numbers of the target architecture and their names,
/// from the kernel headers the BPF programs are built against.
fn syscall_names(out: &std::path::Path, arch: &str) {
    let header = format!("/usr/include/{arch}-linux-gnu/asm/unistd_64.h");
    println!("cargo:rerun-if-changed={header}");
    let text = std::fs::read_to_string(&header).unwrap_or_default();
    let mut rows = String::from("pub(crate) static SYSCALL_NAMES: &[(u32, &str)] = &[\n");
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(nr)) = (parts.next(), parts.next(), parts.next())
        {
            if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<u32>()) {
                rows.push_str(&format!("    ({nr}, {name:?}),\n"));
            }
        }
    }
    rows.push_str("];\n");
    std::fs::write(out.join("syscall_names.rs"), rows).expect("write syscall_names.rs");
}
