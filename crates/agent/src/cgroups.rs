//! Maps cgroup ids (as BPF sees them) to cgroup v2 paths.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a v2-only host,
/// `/sys/fs/cgroup/unified` on a hybrid one. Paths are relative to it, as `/proc/PID/cgroup`'s
/// `0::` line gives them.
pub(crate) fn v2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
            })
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// A cgroup v2 id is the inode number of its directory; a walk of the hierarchy maps them all.
#[derive(Default)]
pub(crate) struct CgroupResolver {
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl CgroupResolver {
    pub(crate) fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        // New cgroups appear all the time; re-walk at most once a second.
        if self
            .last_walk
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.walk();
        }
        self.by_id.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        self.by_id.clear();
        let root_buf = v2_root();
        let root: &Path = &root_buf;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if let Ok(md) = std::fs::metadata(&dir) {
                let rel = dir
                    .strip_prefix(root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                self.by_id.insert(md.ino(), format!("/{rel}"));
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
}

/// Container cgroups on this host (Docker, containerd, CRI-O, Podman), by their cgroup path.
pub fn containers() -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("cgroup")) else {
            continue;
        };
        for line in text.lines() {
            let path = line.rsplit(':').next().unwrap_or("");
            if [
                "docker-",
                "cri-containerd-",
                "crio-",
                "libpod-",
                "/docker/",
                "/kubepods",
            ]
            .iter()
            .any(|m| path.contains(m))
            {
                out.insert(path.to_string());
            }
        }
    }
    out.into_iter().collect()
}
