//! Containers and Kubernetes pods from cgroup paths, and their names from the kubelet.
//!
//! The kubelet names a pod's cgroup after its UID and a container's after its ID, in one of two
//! layouts (its cgroup driver):
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID, '-' as
//!   '_'>.slice/cri-containerd-<ID>.scope` (`crio-`, `docker-` for other runtimes; Guaranteed
//!   pods have no QoS level);
//! - cgroupfs: `/kubepods/burstable/pod<UID>/<ID>`.
//!
//! Outside Kubernetes, Docker and Podman name containers `docker-<ID>.scope`,
//! `libpod-<ID>.scope` or `/docker/<ID>`. The IDs give the `container_id` and `pod_uid` labels;
//! the kubelet's read-only pod list (`GET /pods`), when Baton is given its address, adds `pod`,
//! `namespace` and `container`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use baton_model::sync;

/// What a cgroup path says about the container it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerRef {
    /// The pod's UID (with dashes), under Kubernetes.
    pub pod_uid: Option<String>,
    /// The container runtime's ID (64 hex digits).
    pub container_id: Option<String>,
}

/// Reads a cgroup path; `None` when it is no container's.
pub fn parse_cgroup(path: &str) -> Option<ContainerRef> {
    let mut out = ContainerRef::default();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let in_kube = parts.iter().any(|p| p.starts_with("kubepods"));
    for p in &parts {
        if in_kube {
            if let Some(uid) = pod_uid(p) {
                out.pod_uid = Some(uid);
                continue;
            }
        }
        if let Some(id) = container_id(p) {
            out.container_id = Some(id);
        }
    }
    (out.pod_uid.is_some() || out.container_id.is_some()).then_some(out)
}

/// A pod's UID from its cgroup's name: `pod<UID>` (cgroupfs) or `kubepods-…-pod<UID with
/// '_'>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let at = name.rfind("pod")?;
    let before = &name[..at];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    ok.then_some(uid.to_ascii_lowercase())
}

/// A container's ID from its cgroup's name: `<runtime>-<ID>.scope`, or the bare ID of the
/// cgroupfs layouts. A runtime's monitor (`crio-conmon-`) is not the container.
fn container_id(part: &str) -> Option<String> {
    let is_id = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(name) = part.strip_suffix(".scope") {
        if name.contains("conmon") {
            return None;
        }
        let id = name.rsplit('-').next()?;
        return is_id(id).then(|| id.to_ascii_lowercase());
    }
    is_id(part).then(|| part.to_ascii_lowercase())
}

/// A pod as the kubelet lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// Container ID -> container name.
    pub containers: HashMap<String, String>,
}

/// Pods by UID, refreshed from the kubelet's read-only API on a thread of its own. Readers
/// never wait on the network: a pod not listed yet is labelled by UID alone, and asked for at
/// the next refresh.
#[derive(Debug)]
pub struct PodDirectory {
    url: String,
    pods: RwLock<HashMap<String, Pod>>,
    /// A UID was asked for that is not listed: refresh soon.
    missing: std::sync::atomic::AtomicBool,
    /// UIDs that made a refresh happen sooner since the last regular one: each does once.
    asked: std::sync::Mutex<std::collections::HashSet<String>>,
    errors: std::sync::atomic::AtomicU64,
}

/// How often the pod list is read, and at most how often a missing pod makes it read sooner.
const REFRESH: Duration = Duration::from_secs(30);
const SOONEST: Duration = Duration::from_secs(2);

impl PodDirectory {
    /// Starts reading `url` (`http://127.0.0.1:10255`, the kubelet's read-only port) on a
    /// thread that lives as long as the directory.
    pub fn start(url: &str) -> Result<Arc<PodDirectory>, String> {
        let base = url.trim_end_matches('/');
        if !base.starts_with("http://") {
            return Err(format!(
                "--kubelet {url:?}: give the read-only port's http:// address (https is not \
                 supported)"
            ));
        }
        let dir = Arc::new(PodDirectory {
            url: format!("{base}/pods"),
            pods: RwLock::new(HashMap::new()),
            missing: Default::default(),
            asked: Default::default(),
            errors: Default::default(),
        });
        let weak = Arc::downgrade(&dir);
        std::thread::Builder::new()
            .name("baton-kubelet".into())
            .spawn(move || {
                // The first read is here too: a kubelet that does not answer never delays a
                // start.
                let mut last: Option<Instant> = None;
                loop {
                    let Some(d) = weak.upgrade() else { return };
                    let since = last.map(|t| t.elapsed());
                    let soon = d.missing.load(std::sync::atomic::Ordering::Relaxed)
                        && since.is_none_or(|s| s >= SOONEST);
                    if since.is_none_or(|s| s >= REFRESH) {
                        sync::lock(&d.asked).clear();
                        d.refresh();
                        last = Some(Instant::now());
                    } else if soon {
                        d.refresh();
                        last = Some(Instant::now());
                    }
                    drop(d);
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
            .map_err(|e| format!("starting the kubelet reader: {e}"))?;
        Ok(dir)
    }

    /// The pod of `uid`, if the kubelet lists it.
    pub fn pod(&self, uid: &str) -> Option<Pod> {
        let p = sync::read(&self.pods).get(uid).cloned();
        // An unlisted pod makes one early read; one the kubelet still does not list waits for
        // the regular one.
        if p.is_none() && sync::lock(&self.asked).insert(uid.to_string()) {
            self.missing
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    /// Failed reads of the pod list since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refresh(&self) {
        self.missing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match http_get(&self.url).and_then(|body| parse_pod_list(&body)) {
            Ok(pods) => *sync::write(&self.pods) = pods,
            Err(e) => {
                self.errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(url = %self.url, error = %e, "reading the kubelet's pod list");
            }
        }
    }
}

/// The labels a sample of cgroup `path` gets: `container_id`, `pod_uid`, and from the kubelet
/// `pod`, `namespace` and `container`.
pub fn labels(path: &str, pods: Option<&PodDirectory>) -> Vec<(&'static str, String)> {
    let Some(c) = parse_cgroup(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(uid) = &c.pod_uid {
        out.push(("pod_uid", uid.clone()));
        if let Some(pod) = pods.and_then(|d| d.pod(uid)) {
            if let Some(name) = c
                .container_id
                .as_ref()
                .and_then(|id| pod.containers.get(id))
            {
                out.push(("container", name.clone()));
            }
            out.push(("pod", pod.name));
            out.push(("namespace", pod.namespace));
        }
    }
    if let Some(id) = c.container_id {
        out.push(("container_id", id));
    }
    out
}

/// A kubelet's `PodList`: pods by UID with their containers' IDs (`containerd://<ID>`).
pub fn parse_pod_list(body: &[u8]) -> Result<HashMap<String, Pod>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a pod list: {e}"))?;
    let items = v["items"].as_array().ok_or("no `items` in the pod list")?;
    let mut out = HashMap::new();
    for item in items {
        let meta = &item["metadata"];
        let (Some(uid), Some(name)) = (meta["uid"].as_str(), meta["name"].as_str()) else {
            continue;
        };
        let mut containers = HashMap::new();
        for key in ["containerStatuses", "initContainerStatuses"] {
            for c in item["status"][key].as_array().into_iter().flatten() {
                let (Some(cname), Some(id)) = (c["name"].as_str(), c["containerID"].as_str())
                else {
                    continue;
                };
                let id = id.rsplit("://").next().unwrap_or(id);
                containers.insert(id.to_ascii_lowercase(), cname.to_string());
            }
        }
        out.insert(
            uid.to_ascii_lowercase(),
            Pod {
                name: name.to_string(),
                namespace: meta["namespace"].as_str().unwrap_or("default").to_string(),
                containers,
            },
        );
    }
    Ok(out)
}

/// The most of a pod list read.
const MAX_BODY: u64 = 64 << 20;

/// A plain-HTTP GET of `url`; the body of a 200 answer.
fn http_get(url: &str) -> Result<Vec<u8>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("not an http:// address")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = format!("/{}", path.trim_start_matches('/'));
    // A port after the host, or after an IPv6 address's brackets.
    let has_port = match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    let addr = if has_port {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let sock = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    // One write: a server that answers on the first segment it reads sees the whole request.
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("asking {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_BODY)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading {addr}'s answer: {e}"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{url} answered {status}"));
    }
    let body = &raw[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        return dechunk(body);
    }
    Ok(body.to_vec())
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err("short chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5d9a1c7e-2b3f-4a8d-9e6b-0c1d2e3f4a5b";
    const ID: &str = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

    #[test]
    fn both_kubelet_layouts_give_the_pod_and_the_container() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/{ID}");
        let guaranteed = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        for path in [systemd, cgroupfs, guaranteed] {
            assert_eq!(
                parse_cgroup(&path),
                Some(ContainerRef {
                    pod_uid: Some(UID.into()),
                    container_id: Some(ID.into())
                }),
                "{path}"
            );
        }
        // The pod's own cgroup, a runtime monitor, and plain containers.
        let pod_only = format!("/kubepods/pod{UID}");
        assert_eq!(
            parse_cgroup(&pod_only).and_then(|c| c.pod_uid),
            Some(UID.into())
        );
        let conmon = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup(&conmon).and_then(|c| c.container_id), None);
        for docker in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
        ] {
            assert_eq!(
                parse_cgroup(&docker),
                Some(ContainerRef {
                    pod_uid: None,
                    container_id: Some(ID.into())
                })
            );
        }
        assert_eq!(parse_cgroup("/system.slice/sshd.service"), None);
        assert_eq!(
            parse_cgroup("/user.slice/user-0.slice/podman-pod123.slice"),
            None
        );
    }

    #[test]
    fn a_pod_list_names_pods_and_containers() {
        let body = format!(
            r#"{{"kind":"PodList","items":[{{"metadata":{{"name":"web-1","namespace":"shop","uid":"{UID}"}},
            "status":{{"containerStatuses":[{{"name":"nginx","containerID":"containerd://{ID}"}}]}}}},
            {{"metadata":{{"name":"no-uid"}}}}]}}"#
        );
        let pods = parse_pod_list(body.as_bytes()).expect("pods");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[UID].name, "web-1");
        assert_eq!(pods[UID].namespace, "shop");
        assert_eq!(pods[UID].containers[ID], "nginx");
        assert!(parse_pod_list(b"[]").is_err());
    }
}
