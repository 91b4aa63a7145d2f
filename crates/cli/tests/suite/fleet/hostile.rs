//! Hostile input to a server: decompression bombs, truncated and oversized bodies, debug info
//! for another build ID, a token past its rate, and an agent's /metrics beyond loopback.

use std::io::Write;
use std::process::Command;

use crate::harness::fleet::*;
use crate::harness::*;

/// The server's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// `head` and then zeros, `n` bytes in all, gzip-compressed: about a thousandth of that.
fn gzip_bomb(head: &[u8], n: usize) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(head).expect("gzip");
    let mut chunk = vec![0u8; 1 << 20];
    chunk.truncate((1 << 20) - head.len());
    e.write_all(&chunk).expect("gzip");
    let chunk = vec![0u8; 1 << 20];
    for _ in 1..n >> 20 {
        e.write_all(&chunk).expect("gzip");
    }
    e.finish().expect("gzip")
}

/// A 1 GiB gzip bomb posted to ingest and to the debug-info upload (an ELF header, then zeros,
/// against a 256 MiB cap) is refused (413) and counted, and the server's peak memory rises by
/// less than 64 MB; a bomb of zeros is refused as no ELF file before anything is written.
/// Truncated and malformed bodies get 400, a profile with more samples than `--max-samples` 413 (naming the flag), and debug info
/// whose build ID is not the one in the path 400. Every refusal is counted.
#[test]
fn hostile_bodies_are_refused_within_bounded_memory() {
    let dir = scratch("fleet-hostile");
    let server = start_server(
        &dir.join("data"),
        "127.0.0.1:0",
        &[
            "--insecure-local",
            "--max-samples",
            "1000",
            "--max-debuginfo-bytes",
            "268435456",
        ],
    );
    let pid = server.proc.child.id();
    let bomb = gzip_bomb(b"", 1 << 30);
    let elf_bomb = gzip_bomb(b"\x7fELF\x02\x01\x01", 1 << 30);
    eprintln!("bomb: {} bytes of gzip for 1 GiB", bomb.len());
    assert!(bomb.len() < 4 << 20);
    // A first real call, so that the peak measured includes the server at work.
    let _ = http_json(&server.addr, "/api/v1/status");
    let before = peak_rss(pid);
    let refused = metric(&server.addr, "baton_ingest_refused_batches_total");
    let (code, out) = http_req(&server.addr, "POST", "/api/v1/ingest", None, &bomb);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 413, "the ingest bomb: {text}");
    assert!(text.contains("--max-body-bytes"), "{text}");
    let (code, out) = http_req(
        &server.addr,
        "PUT",
        "/api/v1/debuginfo/0123456789abcdef0123456789abcdef01234567",
        None,
        &elf_bomb,
    );
    assert_eq!(
        code,
        413,
        "the debug-info bomb: {}",
        String::from_utf8_lossy(&out)
    );
    let (code, out) = http_req(
        &server.addr,
        "PUT",
        "/api/v1/debuginfo/0123456789abcdef0123456789abcdef01234567",
        None,
        &bomb,
    );
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 400, "zeros as debug info: {text}");
    assert!(text.contains("not an ELF file"), "{text}");
    let after = peak_rss(pid);
    eprintln!("server peak RSS: {before} before, {after} after the bombs");
    assert!(
        after - before < 64 << 20,
        "the bombs raised the server's peak RSS by {} MB",
        (after - before) >> 20
    );
    assert_eq!(metric(&server.addr, "baton_ingest_too_large_total"), 1.0);
    assert_eq!(metric(&server.addr, "baton_debuginfo_refused_total"), 2.0);

    // More samples than --max-samples: 2,000 empty samples and an empty string table.
    let mut many: Vec<u8> = [0x12u8, 0x00].repeat(2000);
    many.extend([0x32, 0x00]);
    let (code, out) = http_req(&server.addr, "POST", "/api/v1/ingest", None, &many);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 413, "2,000 samples: {text}");
    assert!(text.contains("--max-samples"), "{text}");
    // A query string with more labels than an ingest takes.
    let labels: String = (0..65).map(|i| format!("&l{i}=x")).collect();
    let (code, out) = http_req(
        &server.addr,
        "POST",
        &format!("/api/v1/ingest?profiler=x{labels}"),
        None,
        &many,
    );
    assert_eq!(code, 400, "65 labels: {}", String::from_utf8_lossy(&out));
    // Truncated: a sample whose length runs past the end; gzip cut short.
    let (code, _) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest",
        None,
        &[0x12, 0x10, 1],
    );
    assert_eq!(code, 400);
    let (code, _) = http_req(&server.addr, "POST", "/api/v1/ingest", None, &bomb[..1000]);
    assert_eq!(code, 400);
    assert_eq!(
        metric(&server.addr, "baton_ingest_refused_batches_total"),
        refused + 5.0
    );
    assert_eq!(metric(&server.addr, "baton_ingest_too_large_total"), 2.0);

    // Debug info for another build ID.
    let elf = std::fs::read("/bin/true").expect("/bin/true");
    let (code, out) = http_req(
        &server.addr,
        "PUT",
        "/api/v1/debuginfo/0123456789abcdef0123456789abcdef01234567",
        None,
        &elf,
    );
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("build ID"), "{text}");
    assert_eq!(metric(&server.addr, "baton_debuginfo_refused_total"), 3.0);
    let stored = std::fs::read_dir(dir.join("data/debuginfo"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "a refused upload left a file behind");
}

/// A token past its rate gets 429 and the others go on; a tokens file may hold a token's hash.
#[test]
fn a_token_past_its_rate_gets_429_and_others_do_not() {
    let dir = scratch("fleet-rate");
    let tokens = dir.join("tokens");
    let hashed = Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s {OPERATOR} | sha256sum"))
        .output()
        .expect("sha256sum");
    let hex = String::from_utf8_lossy(&hashed.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string();
    std::fs::write(
        &tokens,
        format!("viewer vera {VIEWER}\noperator olga sha256:{hex}\n"),
    )
    .expect("tokens");
    let server = start_server(
        &dir.join("data"),
        "127.0.0.1:0",
        &[
            "--auth",
            tokens.to_str().expect("path"),
            "--rate-limit",
            "1",
            "--rate-burst",
            "5",
        ],
    );
    let codes: Vec<u16> = (0..12)
        .map(|_| http_req(&server.addr, "GET", "/api/v1/status", Some(VIEWER), b"").0)
        .collect();
    eprintln!("vera's calls: {codes:?}");
    assert!(codes[..5].iter().all(|&c| c == 200), "{codes:?}");
    assert!(codes.contains(&429), "no call was refused: {codes:?}");
    // Olga's token, known to the server by its hash only, has its own rate.
    let (code, out) = http_req(&server.addr, "GET", "/api/v1/status", Some(OPERATOR), b"");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    let (code, _) = http_req(
        &server.addr,
        "GET",
        "/api/v1/status",
        Some("not-a-token-at-all"),
        b"",
    );
    assert_eq!(code, 401);
    assert!(
        !server.proc.text().contains(OPERATOR) && !server.proc.text().contains(VIEWER),
        "a token was logged"
    );
}

/// An agent's /metrics beyond loopback needs a token: without a token file the agent does not
/// start, and with one /metrics answers 401 without it.
#[test]
fn an_agents_metrics_beyond_loopback_needs_a_token() {
    require_root();
    let dir = scratch("fleet-agent-metrics");
    let out = run(baton().args([
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--listen",
        "0.0.0.0:0",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {err}");
    assert!(err.contains("--metrics-token-file"), "{err}");
    let server = start_server(&dir.join("data"), "127.0.0.1:0", &["--insecure-local"]);
    let token = dir.join("metrics.token");
    std::fs::write(&token, "metrics-token-0123456789\n").expect("token");
    let port = free_port();
    let _agent = Proc::spawn(
        "agent",
        baton()
            .args(["agent", "--server", &format!("http://{}", server.addr)])
            .args([
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--metrics-token-file",
            ])
            .arg(&token)
            .arg("--buffer-dir")
            .arg(dir.join("buffer")),
    );
    let addr = format!("127.0.0.1:{port}");
    let code = eventually(60, "the agent's /metrics", || {
        std::net::TcpStream::connect(&addr)
            .ok()
            .map(|_| http_req(&addr, "GET", "/metrics", None, b"").0)
    });
    assert_eq!(code, 401);
    let (code, body) = http_req(
        &addr,
        "GET",
        "/metrics",
        Some("metrics-token-0123456789"),
        b"",
    );
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("baton_agent_samples_produced_total"));
}
