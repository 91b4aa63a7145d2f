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

#[test]
fn plan_without_cpu_rules_tunes_the_whole_host_chain_to_the_fleet_budget() {
    let dir = scratch("plan-host-chain");
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("mkdir");
    std::fs::write(
        cfg.join("baton.toml"),
        "[tuner]\ninterval = \"1h\"\nhost_rows_per_hour = 3000000\n\n[services.app]\nselector = { comm = \"app\" }\n",
    )
    .expect("write config");
    let fleet = dir.join("fleet.toml");
    let mut rows_per_hour = Vec::new();
    for count in [50, 500] {
        std::fs::write(
            &fleet,
            format!(
                "[[group]]\nname = \"h\"\ncount = {count}\ncpus = 16\nservices = {{ app = 4.0 }}\n"
            ),
        )
        .expect("write fleet");
        let out = run(baton()
            .args(["plan", "--format", "json", "--simulate", "3h", "--config"])
            .arg(&cfg)
            .arg("--fleet")
            .arg(&fleet));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let c = &v["host_chain"];
        eprintln!("{count} hosts: {c}");
        let p = c["probability"]
            .as_f64()
            .expect("the host chain's probability");
        assert!(p > 0.0 && p < 1.0, "{c}");
        assert_eq!(c["target_rows_per_hour"], 3_000_000);
        let ratio =
            c["expected_rows"].as_f64().expect("rows") / c["target_rows"].as_f64().expect("target");
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{count} hosts: {ratio:.3} of the budget"
        );
        rows_per_hour.push(c["expected_rows"].as_u64().expect("rows"));
    }
    // Ten times the hosts, the same volume within the budget's +15%.
    assert!(
        rows_per_hour[1] as f64 <= rows_per_hour[0] as f64 * 1.15 + 1.0,
        "{rows_per_hour:?}"
    );
}
