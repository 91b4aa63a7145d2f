//! The jemalloc reporter (`crates/profilers/src/preload/baton_jemalloc.c`) through real BPF:
//! bpftrace counts its USDT probes while a workload linked against Debian's libjemalloc.so.2
//! runs with it preloaded, and the weighted samples must estimate the bytes the workload
//! allocated and kept live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::harness::*;

const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, failing the test with its output when it fails.
fn must(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reporter, built as the profilers crate's build script builds its preload libraries, and
/// the workload, linked against jemalloc.
fn build(dir: &Path) -> (PathBuf, PathBuf) {
    assert!(
        Path::new(JEMALLOC).exists(),
        "this test needs Debian's libjemalloc2 ({JEMALLOC}); install it (scripts/install-deps.sh)"
    );
    let lib = dir.join("libbaton_jemalloc.so");
    must(
        Command::new("clang")
            .args(["-O2", "-g", "-fPIC", "-shared", "-fno-omit-frame-pointer"])
            .args(["-fvisibility=hidden", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&lib)
            .arg(repo().join("crates/profilers/src/preload/baton_jemalloc.c"))
            .args(["-ldl", "-lm", "-lpthread"]),
        "building the jemalloc reporter",
    );
    let exe = dir.join("jemalloc_loop");
    must(
        Command::new("clang")
            // At fixed addresses (no PIE), so that its frames in bpftrace's stacks, printed after
            // it exited, can be told apart by address; calls kept as calls.
            .args([
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-fno-optimize-sibling-calls",
            ])
            .args(["-no-pie", "-o"])
            .arg(&exe)
            .arg(repo().join("bench/jemalloc_loop.c"))
            .arg(JEMALLOC),
        "building the workload",
    );
    (lib, exe)
}

/// bpftrace on the reporter's probes, per process: sampled allocations per (usable size, mean),
/// those freed before the workload's checkpoint, and all allocs and frees.
struct Tracer {
    child: Child,
    out: PathBuf,
}

impl Tracer {
    fn start(dir: &Path, lib: &Path, exe: &Path) -> Tracer {
        let script = dir.join("count.bt");
        let (lib, exe) = (lib.display(), exe.display());
        // The frees of a batch (`n` pointers at `at`), each one ending its sample; before the
        // checkpoint, counted as freed by its sample's (size, mean).
        let frees = |at: &str, n: &str| -> String {
            format!(
                "$i = 0; while ($i < {n} && $i < 64) {{ $p = *(uint64 *)({at} + $i * 8); \
                 @nf[pid] = count(); \
                 if (@stop[pid] == 0 && @sz[$p] != 0) {{ @freed[pid, @sz[$p], @mn[$p]] = count(); }} \
                 delete(@sz[$p]); delete(@mn[$p]); $i++; }}\n"
            )
        };
        std::fs::write(
            &script,
            format!(
                "usdt:{lib}:baton:alloc {{\n{}\
                 @alloc[pid, arg1, arg2] = count(); @sz[arg0] = arg1; \
                 @stacks[pid, ustack(perf, 4)] = count(); \
                 @mn[arg0] = arg2; @na[pid] = count(); }}\n\
                 usdt:{lib}:baton:frees {{\n{}}}\n\
                 uprobe:{exe}:checkpoint {{ @stop[pid] = 1; }}\n",
                frees("arg3", "arg4"),
                frees("arg0", "arg1"),
            ),
        )
        .expect("write the bpftrace script");
        let out = dir.join("bpftrace.out");
        let file = std::fs::File::create(&out).expect("create bpftrace output");
        let child = Command::new("bpftrace")
            .arg(&script)
            // One entry per live sample in @sz and @mn: more than the default 4,096.
            .env("BPFTRACE_MAP_KEYS_MAX", "262144")
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("bpftrace must be installed for this test (scripts/install-deps.sh)");
        let t0 = Instant::now();
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("Attaching")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "bpftrace did not attach: {}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // "Attaching N probes..." comes before the probes are in place.
        std::thread::sleep(Duration::from_secs(2));
        Tracer { child, out }
    }

    /// Stops bpftrace (SIGINT, so that it prints its maps) and returns what it printed.
    fn finish(mut self) -> String {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out).expect("read bpftrace output")
    }
}

/// What bpftrace printed, for one process.
#[derive(Default, Debug)]
struct Counts {
    /// (usable size, mean) -> sampled allocations
    alloc: HashMap<(u64, u64), u64>,
    /// (usable size, mean) -> of those, freed before the checkpoint
    freed: HashMap<(u64, u64), u64>,
    allocs: u64,
    frees: u64,
}

fn numbers(key: &str) -> Vec<u64> {
    key.split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn counts_of(out: &str, pid: u32) -> Counts {
    let mut c = Counts::default();
    for line in out.lines() {
        let Some((key, n)) = line.split_once("]: ") else {
            continue;
        };
        let Some((map, key)) = key.split_once('[') else {
            continue;
        };
        let (key, n) = (numbers(key), n.trim().parse::<u64>().unwrap_or(0));
        if key.first() != Some(&(pid as u64)) {
            continue;
        }
        match (map, &key[1..]) {
            ("@alloc", [s, m]) => *c.alloc.entry((*s, *m)).or_default() += n,
            ("@freed", [s, m]) => *c.freed.entry((*s, *m)).or_default() += n,
            ("@na", []) => c.allocs = n,
            ("@nf", []) => c.frees = n,
            _ => {}
        }
    }
    c
}

/// Bytes the samples stand for: each weighs 1 / (1 - exp(-size / mean)).
fn estimate(samples: &HashMap<(u64, u64), u64>) -> f64 {
    samples
        .iter()
        .map(|(&(size, mean), &n)| {
            let w = if mean == 0 {
                1.0
            } else {
                1.0 / (1.0 - (-(size as f64) / mean as f64).exp())
            };
            n as f64 * size as f64 * w
        })
        .sum()
}

/// The address range of function `name` in the (not position-independent) executable `exe`.
fn symbol_range(exe: &Path, name: &str) -> std::ops::Range<u64> {
    let out = must(
        Command::new("nm").args(["-S", "--defined-only"]).arg(exe),
        "nm",
    );
    out.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == name).then(|| {
                let start = u64::from_str_radix(f[0], 16).expect("nm address");
                start..start + u64::from_str_radix(f[1], 16).expect("nm size")
            })
        })
        .unwrap_or_else(|| panic!("{name} not in {}", exe.display()))
}

/// Per stack bpftrace took at the alloc probe (addresses, innermost first), its count, for `pid`.
fn stacks_of(out: &str, pid: u32) -> Vec<(Vec<u64>, u64)> {
    out.split(&format!("@stacks[{pid}, "))
        .skip(1)
        .filter_map(|entry| {
            let (frames, rest) = entry.split_once("]: ")?;
            let n = rest.lines().next()?.trim().parse().ok()?;
            let addrs = frames
                .lines()
                .filter_map(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
                .collect();
            Some((addrs, n))
        })
        .collect()
}

fn field(out: &str, name: &str) -> f64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("the workload printed no {name}: {out}"))
}

#[test]
fn jemalloc_samples_estimate_allocated_and_live_bytes() {
    require_root();
    let dir = scratch("jemalloc");
    let (lib, exe) = build(&dir);
    let tracer = Tracer::start(&dir, &lib, &exe);

    // Sampled at a 64 KiB mean: about 45,000 samples of 3 GB allocated, 4,000 of 256 MiB live.
    let sampled = Command::new(&exe)
        .args(["3000000", "256", "count"])
        .env("LD_PRELOAD", &lib)
        .env(
            "MALLOC_CONF",
            "prof:true,prof_active:true,lg_prof_sample:16",
        )
        .output()
        .expect("run the workload");
    // Without jemalloc's profiling, the reporter only forwards: the program runs, and nothing is
    // reported.
    let unprofiled = Command::new(&exe)
        .args(["300000"])
        .env("LD_PRELOAD", &lib)
        .output()
        .expect("run the workload without prof");
    // In a process without jemalloc it only forwards to glibc.
    let plain = Command::new("/bin/sh")
        .args(["-c", "echo started"])
        .env("LD_PRELOAD", &lib)
        .env("MALLOC_CONF", "prof:true")
        .output()
        .expect("run sh");
    let traced = tracer.finish();
    eprintln!("--- bpftrace\n{}", &traced[..traced.len().min(4000)]);

    for (what, out) in [
        ("profiled", &sampled),
        ("unprofiled", &unprofiled),
        ("sh", &plain),
    ] {
        assert!(
            out.status.success(),
            "the {what} run failed under the reporter: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "started\n");

    let text = String::from_utf8_lossy(&sampled.stdout);
    let (true_alloc, true_live) = (field(&text, "alloc_bytes"), field(&text, "live_bytes"));
    // The run's pid is not known to Command::output; it is the one with samples.
    let pids: Vec<u32> = traced
        .lines()
        .filter_map(|l| l.strip_prefix("@na[")?.split_once(']')?.0.parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "exactly one process reports samples: {pids:?}"
    );
    let c = counts_of(&traced, pids[0]);
    assert!(c.allocs > 10_000, "too few samples to judge: {c:?}");
    assert!(
        c.alloc.keys().all(|&(_, mean)| mean == 65536),
        "the probes carry jemalloc's mean (2^16): {:?}",
        c.alloc.keys().collect::<Vec<_>>()
    );
    // Everything the workload allocated it freed: sampled allocs and frees pair up (a block of
    // the C runtime may stay).
    assert!(
        c.allocs.abs_diff(c.frees) <= 2,
        "allocs {} and frees {} do not pair up",
        c.allocs,
        c.frees
    );
    // The stack at the probe, past its first frame (the reporter's own), is the entry point the
    // program called, then its caller: [malloc, alloc_site, main] for the workload's blocks.
    let (site, main) = (symbol_range(&exe, "alloc_site"), symbol_range(&exe, "main"));
    let stacks = stacks_of(&traced, pids[0]);
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let through_site: u64 = stacks
        .iter()
        .filter(|(f, _)| f.len() >= 4 && site.contains(&f[2]) && main.contains(&f[3]))
        .map(|(_, n)| n)
        .sum();
    assert!(
        through_site as f64 >= 0.95 * total as f64,
        "only {through_site} of {total} sampled stacks read [reporter, malloc, alloc_site, main]: {stacks:x?}"
    );
    let alloc = estimate(&c.alloc);
    let live = alloc - estimate(&c.freed);
    eprintln!(
        "allocated: estimated {alloc:.0}, true {true_alloc:.0}; live: estimated {live:.0}, true {true_live:.0}"
    );
    assert!(
        (alloc / true_alloc - 1.0).abs() < 0.10,
        "allocated bytes: estimated {alloc:.0}, true {true_alloc:.0}"
    );
    assert!(
        (live / true_live - 1.0).abs() < 0.10,
        "live bytes: estimated {live:.0}, true {true_live:.0}"
    );
}
