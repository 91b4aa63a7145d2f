//! `baton plan` over the shipped 10,000-host fleet and example config.

use std::path::Path;

use crate::harness::*;

#[test]
fn plan_over_the_example_fleet_has_no_conflicts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = run(baton()
        .args(["plan", "--format", "json", "--simulate", "2h", "--config"])
        .arg(root.join("examples/config"))
        .arg("--fleet")
        .arg(root.join("examples/fleet-10k.toml")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["conflicts"], 0);
    assert_eq!(v["hosts"], 10_000);
    let services = v["services"].as_array().expect("services");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["checkout", "search"]);
    for s in services {
        assert!(s["target_samples"].as_u64().expect("target") > 0);
        assert!(s["expected_samples"].as_u64().is_some());
    }
    assert!(
        v["peak_concurrent_per_host"].as_u64().expect("peak") <= 3,
        "the example's cap is 3"
    );
}

#[test]
fn plan_rejects_a_fleet_with_an_unknown_service() {
    let dir = scratch("plan-bad-fleet");
    let fleet = dir.join("fleet.toml");
    std::fs::write(
        &fleet,
        "[[group]]\nname = \"x\"\ncount = 1\ncpus = 2\nservices = { nope = 1.0 }\n",
    )
    .expect("write");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = run(baton()
        .args(["plan", "--config"])
        .arg(root.join("examples/config"))
        .arg("--fleet")
        .arg(&fleet));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\""));
}
