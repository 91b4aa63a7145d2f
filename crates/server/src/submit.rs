//! A run as a client submits it (`POST /api/v1/runs`), and the checks applied before one is
//! accepted, whether it runs here (`runs`) or on a host of the fleet (`fleet`).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use baton_model::sync::read;
use serde::Deserialize;

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub profiler: String,
    pub target: String,
    pub duration: String,
    pub frequency: Option<u64>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub force: bool,
    pub owner: Option<String>,
    /// The host to run on (fleet mode); optional when only one host is up.
    pub host: Option<String>,
    /// Profiler-specific options, e.g. `{"sample_bytes": "0"}`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Target syntax, checked here so a typo is a 400 and not a failed run.
pub(crate) fn check_target(t: &str) -> Result<(), ApiError> {
    let ok = t.split_once(':').is_some_and(|(k, v)| {
        !v.is_empty() && ["pid", "comm", "exe", "cgroup", "service"].contains(&k)
    }) && (!t.starts_with("pid:") || t[4..].parse::<u32>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "bad target {t:?}; use pid:PID, comm:NAME, exe:PATH, cgroup:PATH or service:NAME"
        )))
    }
}

/// Who may submit `req`: a forced run needs an admin, and so does an ad-hoc profiler (a
/// bpftrace script of the config tree runs arbitrary kernel probes).
pub(crate) fn check_caller(
    st: &AppState,
    who: &Principal,
    req: &RunRequest,
) -> Result<(), ApiError> {
    let refuse = |what: String| {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{} may not {what}", who.name),
        ))
    };
    if req.force && who.role < Role::Admin {
        return refuse("force a run: that needs the admin role".into());
    }
    let adhoc = st.config.as_ref().is_some_and(|c| {
        read(c)
            .config
            .as_ref()
            .is_some_and(|c| c.adhoc.contains_key(&req.profiler))
    });
    if adhoc && who.role < Role::Admin {
        return refuse(format!(
            "start the ad-hoc profiler {}: bpftrace scripts need the admin role",
            req.profiler
        ));
    }
    Ok(())
}

/// The audit record of an accepted run: its id, who asked, and what they asked for; the
/// caller adds where it goes (`owner` here, `host` in the fleet).
pub(crate) fn audit_record(id: u64, who: &Principal, req: &RunRequest) -> serde_json::Value {
    serde_json::json!({ "run": id, "who": who.name, "role": who.role,
        "profiler": req.profiler, "target": req.target, "duration": req.duration,
        "frequency": req.frequency, "priority": req.priority })
}

/// The audit event of an accepted run.
pub(crate) fn audit_event(req: &RunRequest) -> &'static str {
    if req.force {
        "forced_run"
    } else {
        "run"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked() {
        assert!(check_target("pid:12").is_ok());
        assert!(check_target("comm:nginx").is_ok());
        assert!(check_target("pid:x").is_err());
        assert!(check_target("comm:").is_err());
        assert!(check_target("nginx").is_err());
    }
}
