//! Compiles each BPF program under `src/bpf/` and generates its Rust skeleton.

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
}
