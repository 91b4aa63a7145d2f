//! Containers and Kubernetes: samples of processes in cgroups named exactly as the kubelet names
//! them (both cgroup drivers) carry the pod UID and container ID, and the names a kubelet's pod
//! list gives (a fake one, served here).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use crate::harness::fleet::cgroup2_mount;
use crate::harness::*;

const UID_SYSTEMD: &str = "5d9a1c7e-2b3f-4a8d-9e6b-0c1d2e3f4a5b";
const UID_CGROUPFS: &str = "9f8e7d6c-5b4a-4321-8765-43210fedcba9";
const ID_SYSTEMD: &str = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
const ID_CGROUPFS: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

/// Cgroup directories made for the test, removed (deepest first) on drop.
struct Tree(Vec<PathBuf>);

impl Tree {
    /// Makes `rel` under the cgroup v2 root, one level at a time, and moves `pid` into it.
    fn place(&mut self, rel: &str, pid: u32) {
        let mut dir = cgroup2_mount();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
                self.0.push(dir.clone());
            }
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A kubelet's read-only `/pods` answer, served on a free loopback port until the process ends.
fn fake_kubelet(body: String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            // The whole request, so closing never resets the connection under unread bytes.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req);
            let (status, text) = if req.starts_with("GET /pods ") {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn kubernetes_cgroups_of_both_drivers_label_samples_with_pod_and_container() {
    require_root();
    let split = workload("split");
    let mut a = Workload::spawn(std::process::Command::new(&split).arg("20"));
    let mut b = Workload::spawn(std::process::Command::new(&split).arg("20"));
    let mut tree = Tree(Vec::new());
    tree.place(
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID_SYSTEMD}.scope",
            UID_SYSTEMD.replace('-', "_")
        ),
        a.id(),
    );
    tree.place(
        &format!("kubepods/besteffort/pod{UID_CGROUPFS}/{ID_CGROUPFS}"),
        b.id(),
    );
    // The kubelet lists the first pod only: the second keeps its UID and ID, without names.
    let kubelet = fake_kubelet(format!(
        r#"{{"kind":"PodList","apiVersion":"v1","items":[{{"metadata":{{"name":"web-7f9c","namespace":"shop","uid":"{UID_SYSTEMD}"}},"status":{{"containerStatuses":[{{"name":"nginx","containerID":"containerd://{ID_SYSTEMD}"}}]}}}}]}}"#
    ));
    let pb = scratch("k8s").join("out.pb");
    let out = run(baton()
        .args([
            "record",
            "cpu",
            "--duration",
            "3s",
            "--kubelet",
            &kubelet,
            "-o",
        ])
        .arg(&pb)
        .args(["--pid", &format!("{},{}", a.id(), b.id())]));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "record failed:\n{log}");
    let samples = pprof_samples(&pb);
    let of = |pid: u32| samples_of(&samples, pid);
    let (sa, sb) = (of(a.id()), of(b.id()));
    assert!(
        !sa.is_empty() && !sb.is_empty(),
        "no samples of both:\n{log}"
    );
    for s in &sa {
        assert_eq!(label(s, "pod_uid"), UID_SYSTEMD, "{:?}", s.labels);
        assert_eq!(label(s, "container_id"), ID_SYSTEMD, "{:?}", s.labels);
        assert_eq!(label(s, "pod"), "web-7f9c", "{:?}\n{log}", s.labels);
        assert_eq!(label(s, "namespace"), "shop", "{:?}", s.labels);
        assert_eq!(label(s, "container"), "nginx", "{:?}", s.labels);
        assert!(
            label(s, "cgroup").starts_with("/kubepods.slice/"),
            "{:?}",
            s.labels
        );
    }
    for s in &sb {
        assert_eq!(label(s, "pod_uid"), UID_CGROUPFS, "{:?}", s.labels);
        assert_eq!(label(s, "container_id"), ID_CGROUPFS, "{:?}", s.labels);
        assert_eq!(label(s, "pod"), "", "{:?}", s.labels);
        assert_eq!(
            label(s, "cgroup"),
            format!("/kubepods/besteffort/pod{UID_CGROUPFS}/{ID_CGROUPFS}")
        );
    }
    // Move the processes out before the cgroups go.
    for w in [&mut a, &mut b] {
        let _ = w.0.kill();
        w.wait();
    }
    drop(tree);
}
