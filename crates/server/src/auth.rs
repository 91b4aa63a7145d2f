//! Tokens, roles and the append-only audit log.
//!
//! A tokens file has one token per line, `ROLE NAME TOKEN`, with `#` comments. Roles are
//! `viewer` (queries), `operator` (runs), `admin` (forced runs, config, escape hatches) and
//! `agent` (register, heartbeat, ingest, debug info). Every API call needs a token unless the
//! server runs with no tokens file (`--insecure-local`, loopback only), where every caller is
//! the local admin.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::sync::lock;
use baton_model::time::{now_ms, rfc3339_ms};
use serde_json::{json, Value};

use crate::api::ErrorBody;
use crate::AppState;

/// What a token may do. Higher user roles include the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "agent" => Role::Agent,
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// Who made a request: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The caller when no tokens are in use (`--insecure-local`).
    pub fn local() -> Principal {
        Principal {
            name: "local".into(),
            role: Role::Admin,
        }
    }
}

/// The tokens a server accepts.
#[derive(Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, Principal>,
}

impl Tokens {
    /// Reads a tokens file; every problem is reported as `file:line: message`.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Tokens, String> {
        let mut t = Tokens::default();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let at = format!("{file}:{}", i + 1);
            match parts.as_slice() {
                [role, name, token] => {
                    let Some(role) = Role::parse(role) else {
                        problems.push(format!(
                            "{at}: unknown role {role:?}; use viewer, operator, admin or agent"
                        ));
                        continue;
                    };
                    if token.len() < 16 {
                        problems.push(format!(
                            "{at}: the token of {name} is shorter than 16 characters"
                        ));
                        continue;
                    }
                    let p = Principal {
                        name: name.to_string(),
                        role,
                    };
                    if t.by_token.insert(token.to_string(), p).is_some() {
                        problems.push(format!("{at}: this token is listed twice"));
                    }
                }
                _ => problems.push(format!("{at}: expected ROLE NAME TOKEN")),
            }
        }
        if t.by_token.is_empty() && problems.is_empty() {
            problems.push(format!("{file}: no tokens"));
        }
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(problems.join("\n"))
        }
    }

    pub fn check(&self, token: &str) -> Option<&Principal> {
        self.by_token.get(token)
    }
}

/// The append-only audit log: one JSON object per line.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Audit {
    pub fn new(path: PathBuf) -> Audit {
        Audit {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an event with its time; a failure to write is logged, never fatal.
    pub fn record(&self, event: &str, mut fields: Value) {
        let now = now_ms();
        if let Value::Object(m) = &mut fields {
            m.insert("at".into(), json!(rfc3339_ms(now)));
            m.insert("event".into(), json!(event));
        }
        let _g = lock(&self.lock);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{fields}"));
        if let Err(e) = written {
            tracing::error!(error = %e, path = %self.path.display(), "writing the audit log failed");
        }
    }
}

/// The role a request needs: agents' routes take agents (or admins), ingest takes agents and
/// operators, other writes take operators, reads take viewers.
fn needed(method: &Method, path: &str) -> Vec<Role> {
    if path.starts_with("/api/v1/agents/") {
        return vec![Role::Agent, Role::Admin];
    }
    if path == "/api/v1/ingest" || path.starts_with("/api/v1/debuginfo/") && method == Method::PUT {
        return vec![Role::Agent, Role::Operator, Role::Admin];
    }
    if method == Method::GET || method == Method::HEAD {
        vec![Role::Viewer, Role::Operator, Role::Admin]
    } else {
        vec![Role::Operator, Role::Admin]
    }
}

/// Checks the bearer token and the route's role; puts the [`Principal`] in the request.
pub async fn middleware(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some(tokens) = &st.tokens else {
        req.extensions_mut().insert(Principal::local());
        return next.run(req).await;
    };
    // The UI's pages and assets hold no data; they ask for a token and send it with each call.
    if !path.starts_with("/api/") && path != "/metrics" {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let deny = |code: StatusCode, error: String| (code, Json(ErrorBody { error })).into_response();
    let Some(p) = token.and_then(|t| tokens.check(t)).cloned() else {
        st.auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(a) = &st.audit {
            a.record(
                "auth_failed",
                json!({ "method": req.method().as_str(), "path": path,
                        "reason": if token.is_some() { "unknown token" } else { "no token" } }),
            );
        }
        return deny(
            StatusCode::UNAUTHORIZED,
            "a valid token is needed: send Authorization: Bearer TOKEN (baton reads it from --token-file or BATON_TOKEN_FILE)".into(),
        );
    };
    let roles = needed(req.method(), &path);
    if !roles.contains(&p.role) {
        if let Some(a) = &st.audit {
            a.record(
                "auth_denied",
                json!({ "method": req.method().as_str(), "path": path, "who": p.name, "role": p.role }),
            );
        }
        return deny(
            StatusCode::FORBIDDEN,
            format!(
                "{} has role {}; {} {path} needs one of: {}",
                p.name,
                p.role.name(),
                req.method(),
                roles
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_is_checked_line_by_line() {
        let t = Tokens::parse(
            "# who\nviewer alice aaaaaaaaaaaaaaaaaaaa\nadmin root bbbbbbbbbbbbbbbbbbbb\n",
            "t",
        )
        .expect("good");
        assert_eq!(
            t.check("aaaaaaaaaaaaaaaaaaaa").map(|p| p.role),
            Some(Role::Viewer)
        );
        assert!(t.check("nope").is_none());
        let e = Tokens::parse("boss x cccccccccccccccccccc\nviewer y short\n", "t").unwrap_err();
        assert!(e.contains("t:1: unknown role"), "{e}");
        assert!(e.contains("t:2: the token of y"), "{e}");
    }

    #[test]
    fn roles_per_route() {
        assert!(needed(&Method::POST, "/api/v1/runs").contains(&Role::Operator));
        assert!(!needed(&Method::POST, "/api/v1/runs").contains(&Role::Viewer));
        assert!(needed(&Method::GET, "/api/v1/top").contains(&Role::Viewer));
        assert!(!needed(&Method::POST, "/api/v1/agents/heartbeat").contains(&Role::Operator));
        assert!(needed(&Method::POST, "/api/v1/ingest").contains(&Role::Agent));
    }
}
