//! The GPU profilers on this GPU-less host, against Baton's fake CUDA runtime, driver and NVML
//! (`tests/workloads/fakecuda`: the real exported names and C signatures, scripted values) and
//! a workload of known truth (`tests/workloads/gpu.c`): exact launch counts with their kernel,
//! dimensions, stream and call chain, exact live device bytes, NVML readings in the store and on
//! the Timeline page in Chromium, and a host without a driver that says so and queues nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::*;

/// The fake libraries' directory and the workload linked against them.
struct Fake {
    dir: PathBuf,
    app: PathBuf,
}

fn fake() -> &'static Fake {
    static FAKE: OnceLock<Fake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = scratch("fakecuda");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads");
        // The driver first: the runtime links it, as a runtime calls its driver.
        for (c, so, links) in [
            ("cuda", "libcuda.so.1", false),
            ("cudart", "libcudart.so.12", true),
            ("nvml", "libnvidia-ml.so.1", false),
        ] {
            let mut cc = Command::new("clang");
            cc.args(["-O2", "-g", "-fPIC", "-shared", "-Wall"])
                .arg(format!("-Wl,-soname,{so}"))
                .arg("-o")
                .arg(dir.join(so))
                .arg(src.join("fakecuda").join(format!("{c}.c")));
            if links {
                cc.arg(dir.join("libcuda.so.1"))
                    .arg(format!("-Wl,-rpath,{}", dir.display()));
            }
            let st = cc
                .status()
                .expect("clang builds the fake CUDA libraries (scripts/install-deps.sh)");
            assert!(st.success(), "building the fake {so} failed");
        }
        let app = dir.join("gpu");
        let st = Command::new("clang")
            .args([
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
            ])
            .args(["-fno-optimize-sibling-calls", "-o"])
            .arg(&app)
            .arg(src.join("gpu.c"))
            .arg(dir.join("libcudart.so.12"))
            .arg(dir.join("libcuda.so.1"))
            .arg(format!("-Wl,-rpath,{}", dir.display()))
            .status()
            .expect("clang");
        assert!(st.success(), "building the GPU workload failed");
        Fake { dir, app }
    })
}

/// `baton record PROFILER -o FILE.pb ARGS -- gpu N LINGER`: the samples and the summary.
fn record_gpu(profiler: &str, args: &[&str], n: u32) -> (Vec<RawSample>, String) {
    let f = fake();
    let pb = scratch(&format!("gpu-{profiler}")).join("out.pb");
    let out = run(baton()
        .args(["record", profiler, "-o"])
        .arg(&pb)
        .args(args)
        .arg("--")
        .arg(&f.app)
        .args([n.to_string().as_str(), "1"]));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "baton record {profiler} failed:\n{log}"
    );
    (pprof_samples(&pb), log)
}

#[test]
fn cuda_counts_every_launch_with_its_kernel_dimensions_stream_and_call_chain() {
    require_root();
    let (samples, log) = record_gpu("cuda", &[], 1000);
    let sum = |pred: &dyn Fn(&RawSample) -> bool| -> f64 {
        samples
            .iter()
            .filter(|s| pred(s))
            .map(|s| s.values[0])
            .sum()
    };
    // Runtime launches of matmul_kernel: exactly 1000, named from the host stub's mangled
    // symbol, with their dimensions and stream, under the whole chain.
    let matmul: Vec<&RawSample> = samples
        .iter()
        .filter(|s| label(s, "kernel") == "matmul_kernel(float*, int)")
        .collect();
    assert!(
        !matmul.is_empty(),
        "no matmul launches:\n{log}\n{samples:?}"
    );
    assert_eq!(matmul.iter().map(|s| s.values[0]).sum::<f64>(), 1000.0);
    for s in &matmul {
        assert_eq!(label(s, "api"), "cudaLaunchKernel");
        assert_eq!(label(s, "grid"), "4x2x1");
        assert_eq!(label(s, "block"), "128x1x1");
        assert_eq!(label(s, "stream"), "0x5000");
        assert_eq!(
            s.stack[..5],
            [
                "cudaLaunchKernel",
                "launch_matmul",
                "forward_pass",
                "train_step",
                "main"
            ],
            "{s:?}"
        );
    }
    // Driver launches: the handle named from cuModuleGetFunction.
    let softmax = |s: &RawSample| label(s, "kernel") == "softmax_kernel(float const*, float*, int)";
    assert_eq!(sum(&softmax), 500.0, "{samples:?}");
    for s in samples.iter().filter(|s| softmax(s)) {
        assert_eq!(
            (
                label(s, "api"),
                label(s, "grid"),
                label(s, "block"),
                label(s, "stream")
            ),
            ("cuLaunchKernel", "8x1x1", "256x1x1", "0x6000")
        );
        assert_eq!(
            s.stack[..4],
            ["cuLaunchKernel", "launch_softmax", "decode_loop", "main"]
        );
    }
    // cuLaunchKernelEx reads its dimensions and stream from the CUlaunchConfig.
    let ex = |s: &RawSample| label(s, "kernel") == "layernorm_kernel";
    assert_eq!(sum(&ex), 5.0);
    for s in samples.iter().filter(|s| ex(s)) {
        assert_eq!(
            (
                label(s, "api"),
                label(s, "grid"),
                label(s, "block"),
                label(s, "stream")
            ),
            ("cuLaunchKernelEx", "2x2x2", "32x4x1", "0x6000")
        );
        assert_eq!(s.stack[..3], ["cuLaunchKernelEx", "launch_ex", "main"]);
    }
    // Graph launches, by API.
    assert_eq!(sum(&|s| label(s, "api") == "cudaGraphLaunch"), 3.0);
    assert_eq!(sum(&|s| label(s, "api") == "cuGraphLaunch"), 2.0);
    assert_eq!(sum(&|s| label(s, "kernel") == "graph 0x9100"), 2.0);
    assert_eq!(sum(&|_| true), 1510.0, "nothing else, nothing twice");
    assert!(
        log.contains("1510 launches") && !log.contains("rate limit"),
        "{log}"
    );
}

#[test]
fn cuda_past_its_rate_limit_keeps_one_launch_in_16_weighted_and_counts_the_rest() {
    require_root();
    // 20,000 + 10,000 + 10 launches from one thread, 500 a second recorded in full.
    let (samples, log) = record_gpu("cuda", &["--opt", "max_rate=500"], 20_000);
    let total: f64 = samples.iter().map(|s| s.values[0]).sum();
    let truth = 30_010.0;
    assert!(
        (total - truth).abs() / truth < 0.1,
        "weighted launches {total} against {truth}:\n{log}"
    );
    let left_out: u64 = log
        .lines()
        .find_map(|l| l.strip_suffix(" events past the rate limit were left out; the ones kept past it are weighted to stand for them"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rate-limit line:\n{log}"));
    // About 15 in 16 of the launches past the first 500.
    assert!(
        (20_000..30_000).contains(&left_out),
        "{left_out} launches left out:\n{log}"
    );
}

#[test]
fn gpumem_reports_device_bytes_allocated_and_exactly_what_stays_live() {
    require_root();
    let (samples, log) = record_gpu("gpumem", &[], 10);
    let by = |frame: &str, index: usize| -> f64 {
        samples
            .iter()
            .filter(|s| s.stack.iter().any(|f| f == frame))
            .map(|s| s.values[index])
            .sum()
    };
    // Values: alloc_bytes, alloc_count, live_bytes, live_count.
    assert_eq!(by("load_weights", 0), 3.0 * 1048576.0, "{log}\n{samples:?}");
    assert_eq!(by("load_weights", 1), 3.0);
    assert_eq!(by("load_weights", 2), 2.0 * 1048576.0, "one of three freed");
    assert_eq!(by("load_weights", 3), 2.0);
    assert_eq!(by("make_scratch", 0), 5.0 * 4096.0, "{log}\n{samples:?}");
    assert_eq!(by("make_scratch", 1), 5.0);
    assert_eq!(by("make_scratch", 2), 0.0, "every scratch buffer freed");
    for s in samples
        .iter()
        .filter(|s| s.stack.iter().any(|f| f == "load_weights"))
    {
        assert_eq!(
            s.stack[..3],
            ["cudaMalloc", "load_weights", "main"],
            "{s:?}"
        );
        assert_eq!(label(s, "api"), "cudaMalloc");
    }
    for s in samples
        .iter()
        .filter(|s| s.stack.iter().any(|f| f == "make_scratch"))
    {
        assert_eq!(
            s.stack[..3],
            ["cuMemAlloc_v2", "make_scratch", "main"],
            "{s:?}"
        );
        assert_eq!(label(s, "api"), "cuMemAlloc");
    }
}

/// The mean of a level's series points over the last 10 minutes.
fn series_mean(addr: &str, query: &str) -> Option<f64> {
    let ts = http_json(
        addr,
        &format!("/api/v1/timeseries?profiler=nvml&since=10m&step=1s&{query}"),
    );
    let points: Vec<f64> = ts["points"]
        .as_array()?
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .collect();
    (!points.is_empty()).then(|| points.iter().sum::<f64>() / points.len() as f64)
}

#[test]
fn nvml_readings_land_in_the_store_and_as_lanes_on_the_timeline() {
    require_root();
    let f = fake();
    let mut w = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pid = w.id();
    let nvml = f.dir.join("libnvidia-ml.so.1");
    let pid_text = PathBuf::from(pid.to_string());
    let data = scratch("gpu-nvml-up");
    let up = Up::start_env(
        &data,
        &["--window", "1s"],
        &[
            ("BATON_NVML_LIBRARY", nvml.as_path()),
            ("BATON_FAKE_NVML_PID", pid_text.as_path()),
            ("BATON_FAKE_NVML_DEVICES", Path::new("2")),
        ],
    );
    let out = run(baton()
        .args(["run", "nvml", "--target", &format!("pid:{pid}")])
        .args(["--duration", "4s", "--wait", "--format", "json"])
        .args(["--server", &format!("http://{}", up.addr)]));
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && json.contains("\"done\""),
        "run: {json}"
    );
    // The process's own readings, and each device's, as the fake library scripts them.
    let pid_filter = format!("filter=pid%3D{pid}");
    let proc_util = eventually(10, "the process's SM utilisation", || {
        series_mean(
            &up.addr,
            &format!("value=gpu_proc_util&{pid_filter}&filter=gpu%3D1"),
        )
    });
    assert_eq!(proc_util, 58.0);
    // A reading of 0 (device 1's idle memory bus) is stored, not left out like a zero count.
    assert_eq!(
        series_mean(&up.addr, "value=gpu_mem_util&filter=gpu%3D1"),
        Some(0.0)
    );
    assert_eq!(
        series_mean(&up.addr, "value=gpu_mem_util&filter=gpu%3D0"),
        Some(41.0)
    );
    assert_eq!(
        series_mean(
            &up.addr,
            &format!("value=gpu_proc_mem_used&{pid_filter}&filter=gpu%3D0")
        ),
        Some(2.0 * 1024.0 * 1024.0 * 1024.0)
    );
    assert_eq!(
        series_mean(&up.addr, "value=gpu_util&filter=gpu%3D1"),
        Some(71.0)
    );
    assert_eq!(
        series_mean(&up.addr, "value=gpu_mem_total&filter=gpu%3D0"),
        Some(80.0 * 1024.0 * 1024.0 * 1024.0)
    );
    assert_eq!(
        series_mean(&up.addr, "value=gpu_power&filter=gpu%3D0"),
        Some(312_000.0)
    );
    // The Timeline page draws them as lanes of the process.
    let dom = chromium_dom(&format!("http://{}/timeline?pid={pid}&since=5m", up.addr));
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never loaded:\n{dom}"
    );
    for (gauge, gpu, text) in [
        ("gpu_proc_util", "0", "mean 58 percent"),
        ("gpu_proc_util", "1", "mean 58 percent"),
        ("gpu_proc_mem_used", "0", "mean 2.0 GiB"),
        ("gpu_util", "0", "mean 70 percent"),
        ("gpu_util", "1", "mean 71 percent"),
        ("gpu_power", "0", "mean 312,000 milliwatts"),
    ] {
        let row = dom
            .split("<tr class=\"gauge\"")
            .find(|r| {
                r.contains(&format!("data-gauge=\"{gauge}\""))
                    && r.contains(&format!("data-gpu=\"{gpu}\""))
            })
            .unwrap_or_else(|| panic!("no {gauge} lane of gpu{gpu} on the timeline:\n{dom}"));
        let row = &row[..row.find("</tr>").unwrap_or(row.len())];
        assert!(row.contains(text), "{gauge} of gpu{gpu}: {row}");
    }
    up.stop();
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn without_a_driver_the_gpu_profilers_say_why_once_and_queue_nothing() {
    require_root();
    assert!(
        !Path::new("/proc/driver/nvidia").exists(),
        "this test checks a host without an NVIDIA driver; this one has one"
    );
    let out = run(baton().args(["profilers", "--format", "json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for name in ["cuda", "gpumem", "nvml"] {
        let p = list
            .as_array()
            .expect("a list")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not registered"));
        let why = p["unavailable"].as_str().unwrap_or_default();
        assert!(why.starts_with("no NVIDIA driver"), "{name}: {p}");
    }
    assert_eq!(
        list.as_array()
            .expect("list")
            .iter()
            .find(|p| p["name"] == "cpu")
            .expect("cpu")["unavailable"],
        serde_json::Value::Null
    );
    let text = run(baton().arg("profilers"));
    assert!(String::from_utf8_lossy(&text.stdout).contains("unavailable here: no NVIDIA driver"));
    // A host-wide run says so and fails with a usage-level exit code, not a crash.
    let rec = run(baton().args(["record", "nvml", "--all", "--duration", "1s"]));
    assert!(!rec.status.success());
    assert!(String::from_utf8_lossy(&rec.stderr).contains("no NVIDIA driver"));
    // Continuous rules of GPU profilers are never drawn: the status says why, no run is queued.
    let cfg = scratch("gpu-nodriver-config");
    std::fs::write(
        cfg.join("gpu.toml"),
        r#"
[services.trainer]
selector = { comm = "sleep" }
continuous = [
  { profiler = "cuda", target_samples_per_hour = 100000, duration = "1s" },
  { profiler = "nvml", target_samples_per_hour = 100000, duration = "1s" },
]
"#,
    )
    .expect("write config");
    let mut w = Command::new("sleep").arg("30").spawn().expect("sleep");
    let data = scratch("gpu-nodriver-data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    let rules = eventually(30, "the continuous rules in the status", || {
        let st = http_json(&up.addr, "/api/v1/status");
        let rules = st["continuous"]["rules"].as_array()?.clone();
        (rules.len() == 2).then_some(rules)
    });
    for r in &rules {
        let why = r["unavailable"].as_str().unwrap_or_default();
        assert!(why.starts_with("no NVIDIA driver"), "{r}");
    }
    // Several slots pass; nothing was queued, so nothing failed.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let runs = http_json(&up.addr, "/api/v1/runs");
    let gpu_runs: Vec<&serde_json::Value> = runs["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["profiler"] == "cuda" || r["profiler"] == "nvml")
        .collect();
    assert!(gpu_runs.is_empty(), "{gpu_runs:?}");
    up.stop();
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn cuda_launches_from_python_carry_the_python_functions_that_made_them() {
    require_root();
    // PyTorch launches from Python through the runtime it loads with dlopen; `lib=` probes the
    // library before the script loads it, so no launch is missed.
    let f = fake();
    let cudart = f.dir.join("libcudart.so.12");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/python/cuda_launch.py");
    let out = run(baton()
        .args(["record", "cuda", "--format", "collapsed", "--opt"])
        .arg(format!("lib={}", cudart.display()))
        .args(["--", "/usr/bin/python3.11"])
        .arg(&script)
        .arg(&cudart)
        .args(["300", "1"]));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut total = 0.0;
    let mut from_python = 0.0;
    for (stack, v) in text.lines().filter_map(|l| l.rsplit_once(' ')) {
        let v: f64 = v.parse().expect("a count");
        total += v;
        assert!(stack.ends_with(";cudaLaunchKernel"), "{stack}");
        if stack.contains(";main;train_step;forward;launch;") {
            from_python += v;
        }
    }
    assert_eq!(total, 300.0, "{text}\n{log}");
    assert_eq!(from_python, 300.0, "Python frames missing:\n{text}");
}
