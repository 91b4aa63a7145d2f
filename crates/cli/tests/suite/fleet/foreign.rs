//! pprof from other producers, batch ids, and malformed uploads.

use std::process::Command;

use crate::harness::fleet::*;
use crate::harness::*;

/// pprof from another producer (Go's runtime profiler, and the same file re-written by
/// `go tool pprof -proto`) is accepted with labels from the query and can be queried; a batch
/// id stores a batch once; a malformed upload is refused and counted.
#[test]
fn foreign_pprof_is_accepted() {
    let dir = scratch("fleet-foreign");
    let server = start_server(&dir.join("data"), "127.0.0.1:0", &["--insecure-local"]);
    let prof = dir.join("go-cpu.pb.gz");
    go_run(
        &dir,
        "burn",
        r#"package main

import (
	"os"
	"runtime/pprof"
	"time"
)

//go:noinline
func burnGo(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i * i % 7
	}
	return s
}

func main() {
	f, _ := os.Create(os.Args[1])
	pprof.StartCPUProfile(f)
	end := time.Now().Add(1500 * time.Millisecond)
	x := 0
	for time.Now().Before(end) {
		x += burnGo(100000)
	}
	pprof.StopCPUProfile()
	f.Close()
	if x == 42 {
		println(x)
	}
}
"#,
        &[&prof],
    );
    let bytes = std::fs::read(&prof).expect("profile");
    let (code, out) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?profiler=go-cpu&service=checkout&host=go1&batch_id=go-1",
        None,
        &bytes,
    );
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
    let (code, out) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?profiler=go-cpu&service=checkout&host=go1&batch_id=go-1",
        None,
        &bytes,
    );
    assert_eq!(code, 200, "a second copy is acknowledged, not stored");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["duplicate"], true);
    let top = http_json(
        &server.addr,
        "/api/v1/top?profiler=go-cpu&value=cpu&since=1h&filter=service%3Dcheckout&limit=20",
    );
    assert!(
        self_percent(&top["rows"], "main.burnGo") > 50.0,
        "{}",
        top["rows"]
    );
    assert_eq!(top["unit"], "nanoseconds");
    // The same profile as `go tool pprof -proto` writes it.
    let out = Command::new("go")
        .args(["tool", "pprof", "-proto"])
        .arg(&prof)
        .output()
        .expect("go tool pprof");
    assert!(out.status.success());
    let (code, _) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?profiler=go-cpu&host=go2",
        None,
        &out.stdout,
    );
    assert_eq!(code, 201);
    let hosts = http_json(&server.addr, "/api/v1/labels/host?profiler=go-cpu&since=1h");
    assert_eq!(hosts["values"].as_array().map(Vec::len), Some(2), "{hosts}");
    // Malformed uploads are refused and counted.
    let refused = metric(&server.addr, "baton_ingest_refused_batches_total");
    let (code, out) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest",
        None,
        b"\x1f\x8b\x08garbage",
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&out));
    let (code, _) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?Bad-Label=1",
        None,
        &bytes,
    );
    assert_eq!(code, 400);
    assert_eq!(
        metric(&server.addr, "baton_ingest_refused_batches_total"),
        refused + 2.0
    );
}
