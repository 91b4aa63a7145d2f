//! Resolves a run's target (`pid:`, `comm:`, `exe:`, `cgroup:`, `service:`) to the pids it names.

use baton_config::Selector;

/// Why a target names no process to profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("bad target {0:?}; use pid:PID, comm:NAME, exe:PATH, cgroup:PATH or service:NAME")]
    Bad(String),
    #[error("process {0} does not exist")]
    NoSuchProcess(u32),
    #[error("no service {0:?} in the config")]
    NoService(String),
    /// Nothing alive matches now (a service's processes may come back later).
    #[error("no live process matches {0:?}")]
    NoLiveProcess(Target),
}

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
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        let bad = || TargetError::Bad(s.to_string());
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

/// The cgroup subtree this agent treats as its host, when several agents share one machine.
static SCOPE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Limits this process's view of "the host's processes" (services, triggers' observations) to
/// the cgroup subtree `cgroup` (a cgroup v2 path such as `/machines/h1`); only the first call
/// counts.
pub fn set_scope(cgroup: &str) {
    let _ = SCOPE.set(cgroup.trim_end_matches('/').to_string());
}

/// Whether a cgroup path lies in the subtree `scope`.
fn in_scope(scope: &str, cgroup: &str) -> bool {
    scope.is_empty()
        || cgroup == scope
        || cgroup
            .strip_prefix(scope)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every process of this host: all of `/proc`, or those in the scope (see [`set_scope`]).
pub fn all_pids() -> Vec<u32> {
    let pids = std::fs::read_dir("/proc").map(|rd| {
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    });
    let pids: Vec<u32> = pids.unwrap_or_default();
    match SCOPE.get() {
        None => pids,
        Some(scope) => pids
            .into_iter()
            .filter(|&p| cgroup_of(p).is_some_and(|c| in_scope(scope, &c)))
            .collect(),
    }
}

pub fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The executable of a process, without the ` (deleted)` the kernel appends once the file
/// was replaced (a deploy), so the path stays the one selectors and exec patterns name.
pub fn exe_of(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.display().to_string();
    Some(exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string())
}

/// The cgroup v2 path of a process, from `/proc/PID/cgroup` (`0::/path`).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

/// The pids a selector matches now (any field; see [`Selector::matches`]). Only the fields the
/// selector uses are read from `/proc`.
pub fn selector_pids(sel: &Selector) -> Vec<u32> {
    let by_cgroup = sel.cgroup.is_some() || sel.unit.is_some();
    let mut out: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| {
            let cgroup = if by_cgroup { cgroup_of(pid) } else { None };
            let comm = if sel.comm.is_some() {
                comm_of(pid)
            } else {
                None
            };
            let exe = if sel.exe.is_some() { exe_of(pid) } else { None };
            sel.matches(cgroup.as_deref(), comm.as_deref(), exe.as_deref())
        })
        .collect();
    out.sort_unstable();
    out
}

/// The pids a target names now; an empty answer is an error the caller reports.
pub fn resolve(
    target: &Target,
    services: &dyn Fn(&str) -> Option<Selector>,
) -> Result<Vec<u32>, TargetError> {
    let pids = match target {
        Target::Pid(p) => {
            if !baton_profilers::sys::process_alive(*p) {
                return Err(TargetError::NoSuchProcess(*p));
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
        Target::Cgroup(c) => selector_pids(&Selector {
            cgroup: Some(c.clone()),
            ..Default::default()
        }),
        Target::Service(name) => {
            let sel = services(name).ok_or_else(|| TargetError::NoService(name.clone()))?;
            selector_pids(&sel)
        }
    };
    // Zombies and processes that exited since the scan cannot be profiled.
    let pids: Vec<u32> = pids
        .into_iter()
        .filter(|p| baton_profilers::sys::process_alive(*p))
        .collect();
    if pids.is_empty() {
        return Err(TargetError::NoLiveProcess(target.clone()));
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
    fn a_scope_is_a_cgroup_subtree() {
        assert!(in_scope("/m/h1", "/m/h1"));
        assert!(in_scope("/m/h1", "/m/h1/svc"));
        assert!(!in_scope("/m/h1", "/m/h10"));
        assert!(!in_scope("/m/h1", "/m"));
        assert!(in_scope("", "/anything"));
    }

    #[test]
    fn resolves_this_process() {
        let me = std::process::id();
        assert_eq!(resolve(&Target::Pid(me), &|_| None), Ok(vec![me]));
        let comm = comm_of(me).expect("comm");
        assert!(resolve(&Target::Comm(comm), &|_| None)
            .expect("by comm")
            .contains(&me));
        // A cgroup target takes its whole subtree: this process is under its own cgroup's
        // parent too.
        let cg = cgroup_of(me).expect("cgroup v2 path");
        assert!(resolve(&Target::Cgroup(cg.clone()), &|_| None)
            .expect("by cgroup")
            .contains(&me));
        let parent = match cg.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => cg[..i].to_string(),
        };
        assert!(resolve(&Target::Cgroup(parent), &|_| None)
            .expect("by parent cgroup")
            .contains(&me));
    }
}
