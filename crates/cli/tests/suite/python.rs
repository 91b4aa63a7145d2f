//! Python stacks: CPython frames named by function, file and line, merged into native stacks,
//! for Debian's static `python3.11` and pyenv's shared-libpython builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/workloads/python")
        .join(name)
        .canonicalize()
        .expect("python workload")
}

/// pyenv's newest install of `minor` (3.8 ... 3.13, 2.7), with its shared libpython.
fn pyenv_python(minor: &str) -> PathBuf {
    let root = std::env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/root/.pyenv"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
        .unwrap_or_else(|e| panic!("pyenv's Pythons are needed ({}): {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{minor}.")))
        })
        .collect();
    found.sort();
    let dir = found
        .pop()
        .unwrap_or_else(|| panic!("pyenv has no Python {minor} under {}", root.display()));
    let bin = dir.join(format!("bin/python{minor}"));
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// A speedscope profile's samples as frames (name, file, line), root first, with weights.
type Stack = Vec<(String, Option<String>, Option<u64>)>;

fn speedscope_stacks(doc: &serde_json::Value) -> Vec<(Stack, f64)> {
    let frames: Vec<(String, Option<String>, Option<u64>)> = doc["shared"]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or("").to_string(),
                f["file"].as_str().map(str::to_string),
                f["line"].as_u64(),
            )
        })
        .collect();
    let p = &doc["profiles"][0];
    p["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .zip(p["weights"].as_array().expect("weights"))
        .map(|(s, w)| {
            let stack = s
                .as_array()
                .expect("sample")
                .iter()
                .map(|i| frames[i.as_u64().expect("index") as usize].clone())
                .collect();
            (stack, w.as_f64().unwrap_or(0.0))
        })
        .collect()
}

/// Records `profiler` over `cmd` as speedscope; returns the stacks and record's stderr.
fn record(profiler: &str, args: &[&str], cmd: &[&str], name: &str) -> (Vec<(Stack, f64)>, String) {
    require_root();
    let out_file = scratch(name).join("profile.speedscope.json");
    let out = run(baton()
        .args(["record", profiler, "--format", "speedscope", "--output"])
        .arg(&out_file)
        .args(args)
        .arg("--")
        .args(cmd));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "baton record failed: {stderr}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).expect("profile")).expect("json");
    (speedscope_stacks(&doc), stderr)
}

/// The Python frames of a stack (those whose file is a `.py`), root first.
fn python_frames(stack: &Stack) -> Vec<&(String, Option<String>, Option<u64>)> {
    stack
        .iter()
        .filter(|(_, file, _)| file.as_deref().is_some_and(|f| f.ends_with(".py")))
        .collect()
}

/// The share of the weight whose innermost Python frame is `name`.
fn leaf_share(stacks: &[(Stack, f64)], name: &str) -> f64 {
    let total: f64 = stacks.iter().map(|(_, w)| w).sum();
    let hit: f64 = stacks
        .iter()
        .filter(|(s, _)| python_frames(s).last().is_some_and(|(n, _, _)| n == name))
        .map(|(_, w)| w)
        .sum();
    hit / total.max(1.0)
}

/// The line of `hot.py` that holds `needle`.
fn line_of(file: &Path, needle: &str) -> u64 {
    std::fs::read_to_string(file)
        .expect("script")
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle") as u64
        + 1
}

/// Share of the weight whose Python frames end (leaf-wards) with `chain`, the last one at
/// `file:line`.
fn chain_share(stacks: &[(Stack, f64)], chain: &[&str], file: &Path, line: u64) -> f64 {
    let file = file.to_string_lossy();
    let total: f64 = stacks.iter().map(|(_, w)| w).sum();
    let hit: f64 = stacks
        .iter()
        .filter(|(s, _)| {
            let py = python_frames(s);
            py.len() >= chain.len()
                && py[py.len() - chain.len()..]
                    .iter()
                    .zip(chain)
                    .all(|((n, _, _), want)| n == want)
                && py.last().is_some_and(|(_, f, l)| {
                    f.as_deref() == Some(file.as_ref()) && *l == Some(line)
                })
        })
        .map(|(_, w)| w)
        .sum();
    if total == 0.0 {
        0.0
    } else {
        hit / total
    }
}

fn known_chain(python: &Path, label: &str) {
    let hot = script("hot.py");
    let (stacks, stderr) = record(
        "cpu",
        &["--frequency", "99"],
        &[
            python.to_str().expect("path"),
            hot.to_str().expect("path"),
            "3",
        ],
        &format!("python-chain-{label}"),
    );
    let line = line_of(&hot, "# HOT");
    let share = chain_share(
        &stacks,
        &["<module>", "top_a", "mid_b", "leaf_c"],
        &hot,
        line,
    );
    let seconds = stacks.iter().map(|(_, w)| w).sum::<f64>() / 1e9;
    eprintln!(
        "{label}: {:.1}% of {seconds:.2} s on CPU has <module> > top_a > mid_b > leaf_c at hot.py:{line}",
        share * 100.0
    );
    let example = stacks
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| format!("{s:?}"))
        .unwrap_or_default();
    assert!(
        share >= 0.95,
        "{label}: only {:.1}% of samples have the chain at hot.py:{line}; the heaviest stack: {example}\n{stderr}",
        share * 100.0
    );
    assert!(seconds >= 1.5, "{label}: only {seconds} s on CPU");
}

#[test]
fn debian_python3_11_names_the_chain_and_its_hot_line() {
    known_chain(Path::new("/usr/bin/python3.11"), "debian-3.11");
}

#[test]
fn pyenv_pythons_3_8_to_3_13_name_the_chain_and_its_hot_line() {
    for minor in ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"] {
        known_chain(&pyenv_python(minor), &format!("pyenv-{minor}"));
    }
}

/// The share of the weight whose innermost Python frame is `innermost`, with `caller` among its
/// Python callers, and that has a native frame below it (leaf-wards) whose name starts with
/// `native`.
fn native_under(stacks: &[(Stack, f64)], caller: &str, innermost: &str, native: &str) -> f64 {
    let total: f64 = stacks.iter().map(|(_, w)| w).sum();
    let hit: f64 = stacks
        .iter()
        .filter(|(s, _)| {
            let Some(py) = s
                .iter()
                .rposition(|(_, f, _)| f.as_deref().is_some_and(|f| f.ends_with(".py")))
            else {
                return false;
            };
            s[py].0 == innermost
                && python_frames(s).iter().any(|(n, _, _)| n == caller)
                && s[py + 1..].iter().any(|(n, _, _)| n.starts_with(native))
        })
        .map(|(_, w)| w)
        .sum();
    hit / total.max(1.0)
}

#[test]
fn a_c_extensions_frames_sit_under_the_python_function_that_called_it() {
    // _json's encoder functions are static: only the debug file of python3.11-dbg names them.
    let json_so = "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so";
    let id = Command::new("readelf")
        .args(["-n", json_so])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let id = id
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build ID in {json_so}"))
        .to_string();
    let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    assert!(
        Path::new(&debug).exists(),
        "{debug} is missing: install Debian's python3.11-dbg (scripts/install-deps.sh)"
    );
    let mixed = script("mixed.py");
    let (stacks, stderr) = record(
        "cpu",
        &["--frequency", "99"],
        &["/usr/bin/python3.11", mixed.to_str().expect("path"), "4"],
        "python-mixed",
    );
    // libz's deflate (exported) under compress_loop; _json's encoder (static, named from the
    // debug file) under json's own Python code, called from encode_loop.
    let deflate = native_under(&stacks, "compress_loop", "compress_loop", "deflate");
    let encoder = native_under(&stacks, "encode_loop", "JSONEncoder.iterencode", "encoder_");
    eprintln!(
        "deflate under compress_loop {:.1}%, encoder_* under encode_loop {:.1}%",
        deflate * 100.0,
        encoder * 100.0
    );
    // The interpreter's own static functions are named from the debug file python3.11-dbg
    // installs for /usr/bin/python3.11 (found through its .gnu_debuglink). A rare address
    // outside every function of it stays unnamed: one CI run had one.
    let total: f64 = stacks.iter().map(|(_, w)| w).sum();
    let unnamed: Vec<&String> = stacks
        .iter()
        .flat_map(|(s, _)| s.iter().map(|(n, _, _)| n))
        .filter(|n| n.contains("[unknown] python3.11+"))
        .collect();
    let unnamed_weight: f64 = stacks
        .iter()
        .filter(|(s, _)| {
            s.iter()
                .any(|(n, _, _)| n.contains("[unknown] python3.11+"))
        })
        .map(|(_, w)| w)
        .sum();
    assert!(
        unnamed_weight / total <= 0.02,
        "{:.1}% of samples have unnamed python3.11 frames with python3.11-dbg installed: \
         {unnamed:?}\n{stderr}",
        unnamed_weight / total * 100.0
    );
    assert!(
        stacks
            .iter()
            .any(|(s, _)| s.iter().any(|(n, _, _)| n == "pymain_run_python")),
        "pymain_run_python (static in Modules/main.c) is not named\n{stderr}"
    );
    assert!(
        deflate >= 0.2,
        "deflate under compress_loop: {:.1}%\n{stderr}",
        deflate * 100.0
    );
    assert!(
        encoder >= 0.2,
        "encoder_* under encode_loop: {:.1}%\n{stderr}",
        encoder * 100.0
    );
}

#[test]
fn threads_offcpu_malloc_and_a_fork_are_named() {
    let threads = script("threads.py");
    let py = "/usr/bin/python3.11";
    let t = threads.to_str().expect("path");
    // Two threads in different Python functions, both named, each under its thread's entry.
    let (stacks, stderr) = record(
        "cpu",
        &["--frequency", "99"],
        &[py, t, "3"],
        "python-threads",
    );
    let share = |name: &str| leaf_share(&stacks, name);
    assert!(
        share("spin_one") > 0.25,
        "spin_one: {}\n{stderr}",
        share("spin_one")
    );
    assert!(
        share("spin_two") > 0.25,
        "spin_two: {}\n{stderr}",
        share("spin_two")
    );

    // Off CPU: the main thread blocked in time.sleep under wait_main.
    let (stacks, stderr) = record("offcpu", &[], &[py, t, "3"], "python-offcpu");
    let asleep: f64 = stacks
        .iter()
        .filter(|(s, _)| {
            let py = python_frames(s);
            py.len() >= 3 && py[py.len() - 2].0 == "main" && py[py.len() - 1].0 == "wait_main"
        })
        .map(|(_, w)| w)
        .sum::<f64>()
        / 1e9;
    assert!(
        (2.0..4.0).contains(&asleep),
        "{asleep} s off CPU under main > wait_main\n{stderr}"
    );

    // Allocations: 1 MiB bytearrays from alloc_here.
    let (stacks, stderr) = record("malloc", &[], &[py, t, "3"], "python-malloc");
    let here = leaf_share(&stacks, "alloc_here");
    assert!(
        here > 0.5,
        "alloc_here has {:.1}% of the bytes allocated\n{stderr}",
        here * 100.0
    );

    // A fork: the child runs spin_one, the parent spin_two; both named.
    let (stacks, stderr) = record(
        "cpu",
        &["--frequency", "99"],
        &[py, t, "3", "fork"],
        "python-fork",
    );
    let named = |name: &str| {
        stacks
            .iter()
            .any(|(s, _)| python_frames(s).last().is_some_and(|(n, _, _)| n == name))
    };
    assert!(
        named("spin_one") && named("spin_two"),
        "the fork's two sides are not both named\n{stderr}"
    );
}

#[test]
fn a_running_python_is_attached_to_and_named() {
    require_root();
    let hot = script("hot.py");
    let mut w = Workload::spawn(Command::new("/usr/bin/python3.11").arg(&hot).arg("6"));
    std::thread::sleep(std::time::Duration::from_millis(700));
    let pid = w.id().to_string();
    let out_file = scratch("python-attach").join("profile.speedscope.json");
    let out = run(baton()
        .args([
            "record",
            "cpu",
            "--frequency",
            "99",
            "--format",
            "speedscope",
            "--output",
        ])
        .arg(&out_file)
        .args(["--pid", &pid, "--duration", "3s"]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    w.wait();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).expect("profile")).expect("json");
    let stacks = speedscope_stacks(&doc);
    let line = line_of(&hot, "# HOT");
    let share = chain_share(
        &stacks,
        &["<module>", "top_a", "mid_b", "leaf_c"],
        &hot,
        line,
    );
    assert!(
        share >= 0.95,
        "{:.1}% with the chain\n{stderr}",
        share * 100.0
    );
}

#[test]
fn python_2_7_keeps_native_stacks_and_says_why() {
    let py27 = pyenv_python("2.7");
    let prog = scratch("python27").join("spin.py");
    std::fs::write(
        &prog,
        "import time\ndef spin(end):\n    x = 0\n    while time.time() < end:\n        x += 1\nspin(time.time() + 2)\n",
    )
    .expect("script");
    let (stacks, stderr) = record(
        "cpu",
        &["--frequency", "99"],
        &[py27.to_str().expect("path"), prog.to_str().expect("path")],
        "python27-run",
    );
    assert!(
        stacks.iter().all(|(s, _)| python_frames(s).is_empty()),
        "Python 2.7 got Python frames"
    );
    // Its stacks are the interpreter's own: the evaluation loop is there.
    assert!(
        stacks
            .iter()
            .any(|(s, _)| s.iter().any(|(n, _, _)| n == "PyEval_EvalFrameEx")),
        "no native evaluation loop in Python 2.7's stacks"
    );
    assert!(
        stderr.contains("Python frames left out") && stderr.contains("Python 2.7"),
        "record does not say why: {stderr}"
    );
}

/// `baton up` profiling the whole host: a Python 3.11 process gets Python frames in the store,
/// and a Python 2.7 process is counted in `/metrics` with why it keeps native stacks.
#[test]
fn up_names_python_frames_host_wide_and_metrics_count_what_it_cannot() {
    require_root();
    let hot = script("hot.py");
    let prog = scratch("python27-up").join("spin.py");
    std::fs::write(
        &prog,
        "import time\nend = time.time() + 20\nwhile time.time() < end:\n    pass\n",
    )
    .expect("script");
    let mut py3 = Workload::spawn(Command::new("/usr/bin/python3.11").arg(&hot).arg("20"));
    let mut py2 = Workload::spawn(Command::new(pyenv_python("2.7")).arg(&prog));
    let data = scratch("python-up").join("data");
    let up = Up::start_with(&data, &["--frequency", "49"]);
    let pid2 = py2.id();
    let metrics = eventually(15, "the Python 2.7 process in /metrics", || {
        let (_, body) = http_get(&up.addr, "/metrics");
        let text = String::from_utf8_lossy(&body).into_owned();
        text.contains(&format!("baton_interp_fallback_stacks{{pid=\"{pid2}\""))
            .then_some(text)
    });
    assert!(metrics.contains("Python 2.7"), "{metrics}");
    let pid3 = py3.id();
    let rows = eventually(20, "leaf_c of the Python 3.11 process in the store", || {
        let top = http_json(
            &up.addr,
            &format!("/api/v1/top?since=5m&limit=50&filter=pid%3D{pid3}"),
        );
        let rows = top["rows"].clone();
        rows.as_array()?
            .iter()
            .any(|r| r["function"] == "leaf_c")
            .then_some(rows)
    });
    assert!(
        rows.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["function"] == "top_a"),
        "{rows}"
    );
    up.stop();
    let _ = std::process::Command::new("kill")
        .args([py3.id().to_string(), pid2.to_string()])
        .status();
    py3.wait();
    py2.wait();
}

/// The tracepoint profilers get Python frames too: `syscalls` on a Python function that writes.
#[test]
fn syscalls_of_a_python_function_are_under_it() {
    let prog = scratch("python-syscalls").join("writes.py");
    std::fs::write(
        &prog,
        "import os, time\n\
         def write_loop(end):\n    fd = os.open('/dev/null', os.O_WRONLY)\n    n = 0\n    while time.time() < end:\n        os.write(fd, b'x')\n        n += 1\n    return n\n\
         write_loop(time.time() + 2)\n",
    )
    .expect("script");
    let (stacks, stderr) = record(
        "syscalls",
        &[],
        &["/usr/bin/python3.11", prog.to_str().expect("path")],
        "python-syscalls-run",
    );
    let under = leaf_share(&stacks, "write_loop");
    assert!(
        under > 0.5,
        "write_loop has {:.1}% of the syscalls\n{stderr}",
        under * 100.0
    );
}
