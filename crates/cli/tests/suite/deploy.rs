//! The deployment files in `deploy/`: the systemd units pass `systemd-analyze verify` without a
//! warning, and the Kubernetes manifests validate against the Kubernetes schemas offline
//! (`kubernetes-validate --strict`, which install-deps.sh puts in /opt/baton-venv). Each check
//! is also shown to fail on a broken copy.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// `systemd-analyze verify` on `units`: (success, everything it printed).
fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .expect("systemd-analyze must be installed (Debian's systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_systemd_units_verify_without_a_warning() {
    let dir = scratch("deploy-units");
    let baton = env!("CARGO_BIN_EXE_baton");
    let mut units = Vec::new();
    for name in [
        "baton-up.service",
        "baton-agent.service",
        "baton-server.service",
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(name)).expect(name);
        // The units name the installed path; verify checks the binary exists.
        let path = dir.join(name);
        std::fs::write(&path, text.replace("/usr/local/bin/baton", baton)).expect("write");
        units.push(path);
    }
    let (ok, text) = verify(&units);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // A unit with a value systemd does not know is reported: the check can fail.
    let bad = dir.join("bad").join("baton-up.service");
    std::fs::create_dir_all(bad.parent().expect("dir")).expect("dir");
    let text = std::fs::read_to_string(&units[0]).expect("unit");
    std::fs::write(
        &bad,
        text.replace("Restart=on-failure", "Restart=sometimes"),
    )
    .expect("write");
    let (_, text) = verify(&[bad]);
    assert!(
        text.contains("sometimes"),
        "a bad unit verified clean: {text}"
    );
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let kv = "/opt/baton-venv/bin/kubernetes-validate";
    assert!(
        Path::new(kv).exists(),
        "{kv} is missing: run scripts/install-deps.sh"
    );
    let manifests: Vec<PathBuf> = ["agent-daemonset.yaml", "server.yaml"]
        .iter()
        .map(|m| deploy().join("k8s").join(m))
        .collect();
    let out = Command::new(kv)
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 8, "{text}");
    // A misspelt field fails.
    let dir = scratch("deploy-k8s");
    let bad = dir.join("bad.yaml");
    let text = std::fs::read_to_string(&manifests[0]).expect("manifest");
    std::fs::write(&bad, text.replace("hostPID: true", "hostPid: true")).expect("write");
    let out = Command::new(kv)
        .arg("--strict")
        .arg(&bad)
        .output()
        .expect("kubernetes-validate");
    assert!(!out.status.success(), "a misspelt field validated");
}
