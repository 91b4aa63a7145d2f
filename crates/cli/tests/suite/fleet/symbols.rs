//! Delayed symbolization: late debug info, and a debuginfod server.

use std::path::Path;
use std::process::Command;

use crate::harness::fleet::*;
use crate::harness::*;

/// Samples of a binary whose debug info reaches the server only later show as `module+0xoff`,
/// then get their names when it arrives, with no re-ingest.
#[test]
fn late_symbols() {
    require_root();
    let dir = scratch("fleet-late");
    let server = start_server(&dir.join("data"), "127.0.0.1:0", &["--insecure-local"]);
    let url = format!("http://{}", server.addr);
    // A copy of the workload under a name of its own: no other test uploads it.
    let bin = dir.join("late-split");
    std::fs::copy(workload("split"), &bin).expect("copy");
    let _agent = start_agent(
        "l1",
        &url,
        &dir.join("buf"),
        &["--no-debuginfo-upload"],
        None,
    );
    let mut split = Command::new(&bin).arg("20").spawn().expect("start");
    eventually(20, "host l1 up", || {
        let v = http_json(&server.addr, "/api/v1/hosts");
        (v["hosts"].as_array()?.len() == 1).then_some(())
    });
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"2s","frequency":99}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    assert_eq!(wait_run(&server.addr, None, id, 30)["state"], "done");
    let top_of_run = || {
        let (_, top) = json_req(
            &server.addr,
            "GET",
            &format!("/api/v1/top?profiler=cpu&since=10m&filter=run%3D{id}&limit=50"),
            None,
            "",
        );
        top["rows"].clone()
    };
    let before = eventually(20, "the run's samples", || {
        let rows = top_of_run();
        (!rows.as_array()?.is_empty()).then_some(rows)
    });
    let names: Vec<&str> = before
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["function"].as_str())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("[unknown] late-split+0x")),
        "unsymbolized frames show module+offset: {names:?}"
    );
    assert!(!names.contains(&"leaf_hot"));
    // The debug info arrives.
    let build_id = build_id_of(&bin);
    let elf = std::fs::read(&bin).expect("read");
    let (code, out) = http_req(
        &server.addr,
        "PUT",
        &format!("/api/v1/debuginfo/{build_id}"),
        None,
        &elf,
    );
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
    // A file under the wrong build ID is refused.
    let (code, _) = http_req(
        &server.addr,
        "PUT",
        "/api/v1/debuginfo/00112233445566778899",
        None,
        &elf,
    );
    assert_eq!(code, 400);
    let after = eventually(30, "the old samples to get their names", || {
        let rows = top_of_run();
        (self_percent(&rows, "leaf_hot") > 0.0).then_some(rows)
    });
    let hot = self_percent(&after, "leaf_hot");
    let cold = self_percent(&after, "leaf_cold");
    assert!(
        (60.0..90.0).contains(&(100.0 * hot / (hot + cold))),
        "hot {hot} cold {cold}"
    );
    assert!(metric(&server.addr, "baton_symbols_late_total") > 0.0);
    let _ = split.kill();
    let _ = split.wait();
}

/// A debuginfod server (here a plain static HTTP server with debuginfod's URL layout) supplies
/// the debug info of a binary no agent uploaded.
#[test]
fn debuginfod_supplies_symbols() {
    require_root();
    let dir = scratch("fleet-debuginfod");
    // A build of the workload with a build ID of its own.
    let build_id = format!("{:08x}{:032x}", std::process::id(), 0xba70_u128);
    let bin = dir.join("dbgd-split");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/split.c");
    let st = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            &format!("-Wl,--build-id=0x{build_id}"),
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("clang");
    assert!(st.success());
    let served = dir.join("srv/buildid").join(&build_id);
    std::fs::create_dir_all(&served).expect("mkdir");
    std::fs::copy(&bin, served.join("debuginfo")).expect("copy");
    let port = free_port();
    let _debuginfod = Proc::spawn(
        "debuginfod",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir.join("srv")),
    );
    let server = start_server(
        &dir.join("data"),
        "127.0.0.1:0",
        &[
            "--insecure-local",
            "--debuginfod",
            &format!("http://127.0.0.1:{port}"),
        ],
    );
    let url = format!("http://{}", server.addr);
    let _agent = start_agent(
        "d1",
        &url,
        &dir.join("buf"),
        &["--no-debuginfo-upload"],
        None,
    );
    let mut split = Command::new(&bin).arg("20").spawn().expect("start");
    eventually(20, "host d1 up", || {
        let v = http_json(&server.addr, "/api/v1/hosts");
        (v["hosts"].as_array()?.len() == 1).then_some(())
    });
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"2s","frequency":99}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    assert_eq!(wait_run(&server.addr, None, id, 30)["state"], "done");
    eventually(30, "names from debuginfod", || {
        let (_, top) = json_req(
            &server.addr,
            "GET",
            &format!("/api/v1/top?profiler=cpu&since=10m&filter=run%3D{id}&limit=50"),
            None,
            "",
        );
        (self_percent(&top["rows"], "leaf_hot") > 0.0).then_some(())
    });
    assert!(
        dir.join("data/debuginfo").join(&build_id).is_file(),
        "the download is kept"
    );
    let _ = split.kill();
    let _ = split.wait();
}
