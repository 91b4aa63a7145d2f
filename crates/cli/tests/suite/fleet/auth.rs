//! Tokens, roles, the audit log and TLS.

use std::process::Command;
use std::process::Stdio;

use crate::harness::fleet::*;
use crate::harness::*;

/// Tokens and roles: a bad token gets 401, a viewer cannot start a run, an operator cannot
/// force one, an admin can, and the audit log has the forced run and the failed auth. The
/// server speaks TLS (rustls) and the agent and CLI trust its CA.
#[test]
fn auth_roles_audit_and_tls() {
    require_root();
    let dir = scratch("fleet-auth");
    let tokens = tokens_file(&dir);
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    // A private CA and a server certificate it signed, as a real deployment has.
    let script = format!(
        "cd {d} && \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
           -subj /CN=baton-test-ca -keyout ca.key -out ca.pem && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
           -keyout key.pem -out req.csr && \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
         openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
           -extfile ext.cnf -out cert.pem",
        d = dir.display()
    );
    let st = Command::new("sh")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl could not make the test certificates");
    let data = dir.join("data");
    let server = start_server(
        &data,
        "127.0.0.1:0",
        &[
            "--auth",
            tokens.to_str().expect("p"),
            "--tls-cert",
            cert.to_str().expect("p"),
            "--tls-key",
            key.to_str().expect("p"),
        ],
    );
    assert!(server.proc.text().contains("https://"));
    let url = format!(
        "https://localhost:{}",
        server.addr.rsplit(':').next().expect("port")
    );
    let ca = ca.to_str().expect("p");
    let agent_token = dir.join("agent.token");
    let _agent = start_agent(
        "a1",
        &url,
        &dir.join("buf"),
        &[
            "--token-file",
            agent_token.to_str().expect("p"),
            "--ca-file",
            ca,
        ],
        None,
    );
    let curl = |token: Option<&str>, method: &str, path: &str, body: &str| -> (u16, String) {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
            ca,
            "-X",
            method,
        ]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if !body.is_empty() {
            c.args(["-H", "content-type: application/json", "-d", body]);
        }
        let out = c.arg(format!("{url}{path}")).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("code line");
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    eventually(30, "host a1 up over TLS", || {
        let (code, body) = curl(Some(VIEWER), "GET", "/api/v1/hosts", "");
        (code == 200 && body.contains("\"a1\"")).then_some(())
    });
    assert_eq!(curl(None, "GET", "/api/v1/status", "").0, 401);
    assert_eq!(
        curl(Some("wrong-token-0123456789"), "GET", "/api/v1/top", "").0,
        401
    );
    assert_eq!(curl(Some(AGENT), "GET", "/api/v1/top", "").0, 403);
    let run = r#"{"profiler":"cpu","target":"comm:nothing-here","duration":"1s"}"#;
    assert_eq!(curl(Some(VIEWER), "POST", "/api/v1/runs", run).0, 403);
    let forced = r#"{"profiler":"cpu","target":"comm:nothing-here","duration":"1s","force":true}"#;
    assert_eq!(curl(Some(OPERATOR), "POST", "/api/v1/runs", forced).0, 403);
    let (code, body) = curl(Some(ADMIN), "POST", "/api/v1/runs", forced);
    assert_eq!(code, 201, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = id["id"].as_u64().expect("id");
    assert_eq!(curl(Some(OPERATOR), "POST", "/api/v1/runs", run).0, 201);
    // Plain HTTP to the TLS port gets no answer.
    let plain = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/api/v1/status", server.addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
    // The CLI takes --server, --token-file and --ca-file.
    let token = dir.join("viewer.token");
    std::fs::write(&token, VIEWER).expect("token");
    let out = run_cli(&[
        "hosts",
        "--server",
        &url,
        "--token-file",
        token.to_str().expect("p"),
        "--ca-file",
        ca,
    ]);
    assert!(out.contains("a1"), "{out}");
    let audit = std::fs::read_to_string(data.join("audit.log")).expect("audit log");
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "forced_run" && e["run"] == id && e["who"] == "ada"),
        "{audit}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "auth_failed"),
        "{audit}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "run" && e["who"] == "olga"),
        "{audit}"
    );
}
