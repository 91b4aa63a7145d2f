//! Tokens, roles and the append-only audit log.
//!
//! A tokens file has one token per line, `ROLE NAME TOKEN`, with `#` comments. Roles are
//! `viewer` (queries), `operator` (runs), `admin` (forced runs, config, escape hatches) and
//! `agent` (register, heartbeat, ingest, debug info). Every API call needs a token unless the
//! server runs with no tokens file (`--insecure-local`, loopback only), where every caller is
//! the local admin.
//!
//! The file may hold a token's SHA-256 instead of the token (`sha256:HEX`, as
//! `printf %s TOKEN | sha256sum` prints it), and the server keeps only hashes in memory: a
//! request's token is hashed and looked up. Tokens are never logged; the audit log names the
//! token's NAME. Each token has a rate ([`RateLimit`]); past it, calls get 429.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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

/// The tokens a server accepts, by their SHA-256.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Principal>,
}

/// A token's SHA-256.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A token's line for a tokens file, with its hash in place of the token.
pub fn hashed_line(role: &str, name: &str, token: &str) -> String {
    let hex: String = token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{role} {name} sha256:{hex}")
}

/// `sha256:HEX` as the 32 bytes it spells.
fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
                    let hash = match parse_hash(token) {
                        Some(h) => h,
                        None if token.starts_with("sha256:") => {
                            problems.push(format!(
                                "{at}: the hash of {name} is not sha256: and 64 hex digits"
                            ));
                            continue;
                        }
                        None if token.len() < 16 => {
                            problems.push(format!(
                                "{at}: the token of {name} is shorter than 16 characters"
                            ));
                            continue;
                        }
                        None => token_hash(token),
                    };
                    let p = Principal {
                        name: name.to_string(),
                        role,
                    };
                    if t.by_hash.insert(hash, p).is_some() {
                        problems.push(format!("{at}: this token is listed twice"));
                    }
                }
                _ => problems.push(format!("{at}: expected ROLE NAME TOKEN")),
            }
        }
        if t.by_hash.is_empty() && problems.is_empty() {
            problems.push(format!("{file}: no tokens"));
        }
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(problems.join("\n"))
        }
    }

    pub fn check(&self, token: &str) -> Option<&Principal> {
        self.by_hash.get(&token_hash(token))
    }
}

/// Calls per token, as a token bucket: `rate` a second on average, up to `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// Calls refused with 429.
    pub refused: AtomicU64,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether `who` may make a call now; the call takes one from its bucket.
    pub fn allow(&self, who: &str) -> bool {
        let now = Instant::now();
        let mut b = lock(&self.buckets);
        let e = b.entry(who.to_string()).or_insert((self.burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * self.rate).min(self.burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
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
    // Counting what Stack Schema rules would match reads only: viewers may.
    if method == Method::GET || method == Method::HEAD || path == "/api/v1/schema/check" {
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
    if let Some(r) = &st.rate {
        if !r.allow(&p.name) {
            let mut resp = deny(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} is past its rate of calls (the server's --rate-limit); try again shortly",
                    p.name
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return resp;
        }
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_past_its_rate_is_refused_and_others_are_not() {
        let r = RateLimit::new(0.001, 3.0);
        assert!((0..3).all(|_| r.allow("a")));
        assert!(!r.allow("a"));
        assert!(r.allow("b"), "another token has its own bucket");
        assert_eq!(r.refused.load(Ordering::Relaxed), 1);
    }

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
        // A hashed line stands for its token, and holds no token.
        let line = hashed_line("operator", "ci", "cccccccccccccccccccc");
        assert!(!line.contains("cccc"), "{line}");
        let t = Tokens::parse(&line, "t").expect("hashed");
        assert_eq!(
            t.check("cccccccccccccccccccc").map(|p| p.role),
            Some(Role::Operator)
        );
        assert!(Tokens::parse("viewer z sha256:abc", "t")
            .unwrap_err()
            .contains("t:1: the hash of z"));
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
