//! Resolves a run's target (`pid:`, `comm:`, `exe:`, `cgroup:`, `service:`) to the pids it names.

use baton_config::Selector;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    Comm(String),
    Exe(String),
    Cgroup(String),
    Service(String),
}

impl Target {
    /// Parses `pid:1234`, `comm:NAME`, `exe:PATH`, `cgroup:PATH` or `service:NAME`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let bad = || {
            format!(
                "bad target {s:?}; use pid:PID, comm:NAME, exe:PATH, cgroup:PATH or service:NAME"
            )
        };
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        if value.is_empty() {
            return Err(bad());
        }
        Ok(match kind {
            "pid" => Target::Pid(value.parse().map_err(|_| bad())?),
            "comm" => Target::Comm(value.to_string()),
            "exe" => Target::Exe(value.to_string()),
            "cgroup" => Target::Cgroup(value.to_string()),
            "service" => Target::Service(value.to_string()),
            _ => return Err(bad()),
        })
    }
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn exe_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

fn cgroup_pids(path: &str) -> Vec<u32> {
    let file = format!("/sys/fs/cgroup{}/cgroup.procs", path.trim_end_matches('/'));
    std::fs::read_to_string(file)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The pids a selector matches now (any field).
pub fn selector_pids(sel: &Selector) -> Vec<u32> {
    let mut out = Vec::new();
    if let Some(c) = &sel.cgroup {
        out.extend(cgroup_pids(c));
    }
    if let Some(u) = &sel.unit {
        out.extend(cgroup_pids(&format!("/system.slice/{u}")));
    }
    if sel.comm.is_some() || sel.exe.is_some() {
        for pid in all_pids() {
            let by_comm = sel
                .comm
                .as_ref()
                .is_some_and(|c| comm_of(pid).as_ref() == Some(c));
            let by_exe = sel
                .exe
                .as_ref()
                .is_some_and(|e| exe_of(pid).as_ref() == Some(e));
            if by_comm || by_exe {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The pids a target names now; an empty answer is an error the caller reports.
pub fn resolve(
    target: &Target,
    services: &dyn Fn(&str) -> Option<Selector>,
) -> Result<Vec<u32>, String> {
    let pids = match target {
        Target::Pid(p) => {
            if !baton_profilers::sys::process_alive(*p) {
                return Err(format!("process {p} does not exist"));
            }
            vec![*p]
        }
        Target::Comm(c) => selector_pids(&Selector {
            comm: Some(c.clone()),
            ..Default::default()
        }),
        Target::Exe(e) => selector_pids(&Selector {
            exe: Some(e.clone()),
            ..Default::default()
        }),
        Target::Cgroup(c) => cgroup_pids(c),
        Target::Service(name) => {
            let sel = services(name).ok_or_else(|| format!("no service {name:?} in the config"))?;
            selector_pids(&sel)
        }
    };
    // Zombies and processes that exited since the scan cannot be profiled.
    let pids: Vec<u32> = pids
        .into_iter()
        .filter(|p| baton_profilers::sys::process_alive(*p))
        .collect();
    if pids.is_empty() {
        return Err(format!("no live process matches {target:?}"));
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(Target::parse("pid:12"), Ok(Target::Pid(12)));
        assert_eq!(
            Target::parse("comm:nginx"),
            Ok(Target::Comm("nginx".into()))
        );
        assert!(Target::parse("pid:x").is_err());
        assert!(Target::parse("nope").is_err());
        assert!(Target::parse("comm:").is_err());
    }

    #[test]
    fn resolves_this_process() {
        let me = std::process::id();
        assert_eq!(resolve(&Target::Pid(me), &|_| None), Ok(vec![me]));
        let comm = comm_of(me).expect("comm");
        assert!(resolve(&Target::Comm(comm), &|_| None)
            .expect("by comm")
            .contains(&me));
    }
}
