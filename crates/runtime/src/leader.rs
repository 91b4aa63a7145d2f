//! The campaign for the control plane: several servers share one store, and the one holding an
//! etcd lease on `/baton/<cluster>/leader` is the leader (see `docs/fleet.md`).
//!
//! A thread speaks etcd's v3 JSON gateway. When nobody holds the key it grants a lease and
//! takes the key with a transaction (`create_revision == 0`), its value this server's URL, bound
//! to the lease. While it leads it renews the lease every third of the TTL and checks that the
//! key is still its own; otherwise it reads who leads at the same pace. It tells the server
//! through [`Leadership::set`].
//!
//! Fencing: the leader keeps a local deadline, the start of its last successful renewal plus
//! the TTL less a margin, which comes before etcd can expire the lease. A failed renewal, a TTL
//! of 0 or a passed deadline makes it step down at once, so two servers never both believe they
//! lead. A killed leader's key vanishes with its lease after the TTL; a stopped one revokes its
//! lease, and the other server takes over at its next poll.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_server::leader::Leadership;
use serde_json::{json, Value};

use crate::stop::stop_requested;

/// Errors of the campaign and of its calls to etcd.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("no etcd endpoint given")]
    NoEndpoints,
    #[error("etcd endpoint {0:?}: write it as http://HOST:PORT")]
    BadEndpoint(String),
    #[error("the lease TTL must be at least 1s, not {0:?}")]
    BadTtl(Duration),
    #[error("cannot reach etcd at {endpoint}: {error}")]
    Unreachable {
        endpoint: String,
        error: ureq::Error,
    },
    #[error("etcd at {endpoint} answered {status} to {call}: {body}")]
    Status {
        endpoint: String,
        call: &'static str,
        status: u16,
        body: String,
    },
    #[error("etcd at {endpoint} answered {call} with {detail}")]
    BadReply {
        endpoint: String,
        call: &'static str,
        detail: String,
    },
    #[error("no time left to ask etcd before the lease's deadline")]
    NoTime,
    #[error("starting the campaign thread")]
    Spawn(#[source] std::io::Error),
}

/// The key the leader holds.
pub fn leader_key(cluster: &str) -> String {
    format!("/baton/{cluster}/leader")
}

/// Starts the campaign of the server reached at `self_url` among those of `cluster`, through
/// the etcd `endpoints` (tried in turn), with a lease of `ttl`; it updates `leadership` until
/// a stop is asked for, then revokes the lease so another server takes over at once.
pub fn spawn_campaign(
    etcd: Vec<String>,
    cluster: String,
    self_url: String,
    ttl: Duration,
    leadership: Arc<Leadership>,
) -> Result<JoinHandle<()>, LeaderError> {
    spawn_campaign_until(etcd, cluster, self_url, ttl, leadership, stop_requested)
}

/// As [`spawn_campaign`], until `stop()` says so (several campaigns in one process, in tests).
pub fn spawn_campaign_until(
    etcd: Vec<String>,
    cluster: String,
    self_url: String,
    ttl: Duration,
    leadership: Arc<Leadership>,
    stop: impl Fn() -> bool + Send + 'static,
) -> Result<JoinHandle<()>, LeaderError> {
    if ttl < Duration::from_secs(1) {
        return Err(LeaderError::BadTtl(ttl));
    }
    let etcd = Etcd::new(etcd, ttl / 5)?;
    let mut c = Campaign {
        etcd,
        key: leader_key(&cluster),
        self_url,
        ttl,
        leadership,
        lease: None,
        leading: false,
        said: String::new(),
    };
    std::thread::Builder::new()
        .name("baton-campaign".into())
        .spawn(move || c.run(stop))
        .map_err(LeaderError::Spawn)
}

/// A lease this process holds.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    /// The TTL etcd granted (it may raise the one asked for).
    ttl: Duration,
    /// Past it, the lease may have expired in etcd: a leader steps down.
    deadline: Instant,
}

struct Campaign {
    etcd: Etcd,
    key: String,
    self_url: String,
    ttl: Duration,
    leadership: Arc<Leadership>,
    lease: Option<Lease>,
    leading: bool,
    /// The last state logged: a change is logged once, not every poll.
    said: String,
}

impl Campaign {
    fn run(&mut self, stop: impl Fn() -> bool) {
        let period = self.ttl / 3;
        let mut next = Instant::now();
        while !stop() {
            if self.leading && self.lease.is_some_and(|l| Instant::now() >= l.deadline) {
                self.step_down("the lease was not renewed in time".into());
            }
            if Instant::now() >= next {
                next = Instant::now() + period;
                if self.leading {
                    self.renew();
                } else {
                    self.poll();
                }
            }
            std::thread::sleep(Duration::from_millis(50).min(period));
        }
        self.resign();
    }

    /// The margin kept before the lease's end: a third of the TTL, so the steps between
    /// noticing and stepping down (a call cut at the deadline, one tick) fit in it.
    fn deadline(&self, renewed_at: Instant, ttl: Duration) -> Instant {
        renewed_at + ttl - ttl / 3
    }

    /// The leader's round: renew the lease, then check the key is still ours.
    fn renew(&mut self) {
        let Some(lease) = self.lease else {
            self.step_down("no lease".into());
            return;
        };
        let t0 = Instant::now();
        match self.etcd.keepalive(lease.id, lease.deadline) {
            Ok(ttl) if ttl > 0 => {
                let ttl = Duration::from_secs(ttl as u64).min(lease.ttl);
                let renewed = Lease {
                    deadline: self.deadline(t0, ttl),
                    ..lease
                };
                self.lease = Some(renewed);
                match self.etcd.range(&self.key, renewed.deadline) {
                    Ok(Some(held)) if held.lease == lease.id => {}
                    Ok(other) => {
                        self.step_down("the leader key is no longer ours".into());
                        self.revoke();
                        if let Some(h) = other {
                            self.follow(h.url);
                        }
                    }
                    // Renewed: the deadline stands, and the next round checks again.
                    Err(e) => tracing::debug!(error = %e, "reading the leader key"),
                }
            }
            Ok(_) => {
                self.lease = None;
                self.step_down("the lease expired".into());
            }
            Err(e) => self.step_down(format!("renewing the lease failed: {e}")),
        }
    }

    /// The follower's round: learn who leads; take the key if nobody does.
    fn poll(&mut self) {
        let cutoff = self.etcd.cutoff();
        let held = match self.etcd.range(&self.key, cutoff) {
            Ok(h) => h,
            Err(e) => {
                self.leadership.set(false, None);
                self.say(format!("etcd unreachable ({e}); not leading"));
                return;
            }
        };
        match held {
            // Still ours after a failed renewal: take it back if the lease lives.
            Some(h) if self.lease.is_some_and(|l| l.id == h.lease) => self.reclaim(),
            Some(h) => {
                self.revoke();
                self.follow(h.url);
            }
            None => self.take(),
        }
    }

    /// The key is ours but we stepped down: lead again if the lease renews.
    fn reclaim(&mut self) {
        let Some(lease) = self.lease else { return };
        let t0 = Instant::now();
        match self.etcd.keepalive(lease.id, self.etcd.cutoff()) {
            Ok(ttl) if ttl > 0 => {
                let ttl = Duration::from_secs(ttl as u64).min(lease.ttl);
                self.lease = Some(Lease {
                    deadline: self.deadline(t0, ttl),
                    ..lease
                });
                self.lead();
            }
            Ok(_) => self.lease = None,
            Err(e) => self.say(format!("etcd unreachable ({e}); not leading")),
        }
    }

    /// Nobody leads: grant a lease and take the key with it, unless another server was faster.
    fn take(&mut self) {
        self.revoke();
        let t0 = Instant::now();
        let lease = match self
            .etcd
            .grant(self.ttl.as_secs() as i64, self.etcd.cutoff())
        {
            Ok((id, ttl)) => {
                let ttl = Duration::from_secs(ttl.max(1) as u64);
                Lease {
                    id,
                    ttl,
                    deadline: self.deadline(t0, ttl),
                }
            }
            Err(e) => {
                self.say(format!("etcd unreachable ({e}); not leading"));
                return;
            }
        };
        self.lease = Some(lease);
        match self
            .etcd
            .take(&self.key, &self.self_url, lease.id, lease.deadline)
        {
            Ok(Taken::Won) => self.lead(),
            Ok(Taken::Held(h)) => {
                self.revoke();
                self.follow(h.url);
            }
            // Gone between the compare and the read: the next poll tries again.
            Ok(Taken::Vanished) => self.revoke(),
            Err(e) => {
                self.revoke();
                self.say(format!("etcd unreachable ({e}); not leading"));
            }
        }
    }

    fn lead(&mut self) {
        self.leading = true;
        self.leadership.set(true, Some(self.self_url.clone()));
        let id = self.lease.map(|l| l.id).unwrap_or_default();
        self.say(format!(
            "holding the control plane as {} (etcd lease {id:x} on {})",
            self.self_url, self.key
        ));
    }

    fn follow(&mut self, url: String) {
        // Our own URL under another lease: a previous run of this server, until it expires.
        let url = (url != self.self_url).then_some(url);
        let said = match &url {
            Some(u) => format!("the control plane is at {u}; taking ingest and queries"),
            None => "waiting for the previous leader's lease to expire".to_string(),
        };
        self.leadership.set(false, url);
        self.say(said);
    }

    fn step_down(&mut self, why: String) {
        self.leading = false;
        self.leadership.set(false, None);
        self.say(format!("stepped down: {why}"));
    }

    /// Gives the lease back (deleting the key if it holds it); forgets it either way.
    fn revoke(&mut self) {
        if let Some(l) = self.lease.take() {
            if let Err(e) = self.etcd.revoke(l.id, self.etcd.cutoff()) {
                tracing::debug!(error = %e, "revoking a lease; it will expire");
            }
        }
    }

    fn resign(&mut self) {
        let was = self.leading;
        self.leading = false;
        self.leadership.set(false, None);
        self.revoke();
        if was {
            self.say("resigned the control plane".into());
        }
    }

    fn say(&mut self, s: String) {
        if s != self.said {
            eprintln!("baton server: {s}");
            self.said = s;
        }
    }
}

/// Who holds the leader key.
#[derive(Debug)]
struct Held {
    url: String,
    lease: i64,
}

/// How taking the leader key went.
#[derive(Debug)]
enum Taken {
    Won,
    Held(Held),
    /// Held at the compare, gone at the read.
    Vanished,
}

/// A client of etcd's JSON gateway over several endpoints, sticking to the one that answers.
struct Etcd {
    endpoints: Vec<String>,
    current: usize,
    agent: ureq::Agent,
    /// The most one try on one endpoint takes.
    per_try: Duration,
}

impl Etcd {
    fn new(endpoints: Vec<String>, per_try: Duration) -> Result<Etcd, LeaderError> {
        let mut urls = Vec::new();
        for e in endpoints.iter().flat_map(|e| e.split(',')) {
            let e = e.trim().trim_end_matches('/');
            if e.is_empty() {
                continue;
            }
            let url = if e.contains("://") {
                e.to_string()
            } else {
                format!("http://{e}")
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(LeaderError::BadEndpoint(e.to_string()));
            }
            urls.push(url);
        }
        if urls.is_empty() {
            return Err(LeaderError::NoEndpoints);
        }
        let cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(per_try))
            .build();
        Ok(Etcd {
            endpoints: urls,
            current: 0,
            agent: cfg.into(),
            per_try,
        })
    }

    /// Time enough to try every endpoint once.
    fn cutoff(&self) -> Instant {
        Instant::now() + self.per_try * self.endpoints.len() as u32
    }

    /// POSTs `body` to `path`, trying the endpoints in turn until one answers or `cutoff`
    /// passes; a call is cut at `cutoff`.
    fn post(
        &mut self,
        call: &'static str,
        path: &str,
        body: &Value,
        cutoff: Instant,
    ) -> Result<Value, LeaderError> {
        let n = self.endpoints.len();
        let mut last = LeaderError::NoTime;
        for k in 0..n {
            let i = (self.current + k) % n;
            let left = cutoff.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let endpoint = &self.endpoints[i];
            let r = self
                .agent
                .post(format!("{endpoint}{path}"))
                .config()
                .timeout_global(Some(left.min(self.per_try)))
                .build()
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes());
            match read_reply(endpoint, call, r) {
                Ok(v) => {
                    self.current = i;
                    return Ok(v);
                }
                Err(e @ LeaderError::Status { status, .. }) if status < 500 => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Grants a lease of `ttl` seconds: its id and the TTL granted.
    fn grant(&mut self, ttl: i64, cutoff: Instant) -> Result<(i64, i64), LeaderError> {
        let v = self.post(
            "lease grant",
            "/v3/lease/grant",
            &json!({ "TTL": ttl }),
            cutoff,
        )?;
        let id = int(&v["ID"]).ok_or_else(|| self.bad("lease grant", "no lease ID"))?;
        Ok((id, int(&v["TTL"]).unwrap_or(ttl)))
    }

    /// Renews a lease: the TTL it has now, 0 once it expired.
    fn keepalive(&mut self, id: i64, cutoff: Instant) -> Result<i64, LeaderError> {
        let body = json!({ "ID": id.to_string() });
        let v = self.post("lease keepalive", "/v3/lease/keepalive", &body, cutoff)?;
        // The gateway streams: each message is {"result": ...} or {"error": ...}.
        if !v["error"].is_null() {
            return Err(self.bad("lease keepalive", &v["error"].to_string()));
        }
        Ok(int(&v["result"]["TTL"]).unwrap_or(0))
    }

    fn revoke(&mut self, id: i64, cutoff: Instant) -> Result<(), LeaderError> {
        let body = json!({ "ID": id.to_string() });
        self.post("lease revoke", "/v3/lease/revoke", &body, cutoff)
            .map(drop)
    }

    /// Who holds `key`, if anyone.
    fn range(&mut self, key: &str, cutoff: Instant) -> Result<Option<Held>, LeaderError> {
        let v = self.post(
            "range",
            "/v3/kv/range",
            &json!({ "key": b64::encode(key.as_bytes()) }),
            cutoff,
        )?;
        self.held(&v, "range")
    }

    /// Puts `key` = `value` bound to `lease` if the key does not exist.
    fn take(
        &mut self,
        key: &str,
        value: &str,
        lease: i64,
        cutoff: Instant,
    ) -> Result<Taken, LeaderError> {
        let key = b64::encode(key.as_bytes());
        let body = json!({
            "compare": [{
                "key": key,
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": "0",
            }],
            "success": [{ "request_put": {
                "key": key,
                "value": b64::encode(value.as_bytes()),
                "lease": lease.to_string(),
            }}],
            "failure": [{ "request_range": { "key": key } }],
        });
        let v = self.post("txn", "/v3/kv/txn", &body, cutoff)?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(Taken::Won);
        }
        let range = &v["responses"][0]["response_range"];
        Ok(match self.held(range, "txn")? {
            Some(h) => Taken::Held(h),
            None => Taken::Vanished,
        })
    }

    /// The holder in a range response.
    fn held(&self, range: &Value, call: &'static str) -> Result<Option<Held>, LeaderError> {
        let Some(kv) = range["kvs"].as_array().and_then(|k| k.first()) else {
            return Ok(None);
        };
        let value = kv["value"].as_str().unwrap_or_default();
        let url = b64::decode(value)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| self.bad(call, "a value that is not base64 UTF-8"))?;
        Ok(Some(Held {
            url,
            lease: int(&kv["lease"]).unwrap_or(0),
        }))
    }

    fn bad(&self, call: &'static str, detail: &str) -> LeaderError {
        LeaderError::BadReply {
            endpoint: self.endpoints[self.current].clone(),
            call,
            detail: detail.to_string(),
        }
    }
}

/// The JSON body of a 2xx answer; an error otherwise.
fn read_reply(
    endpoint: &str,
    call: &'static str,
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, LeaderError> {
    let resp = r.map_err(|error| LeaderError::Unreachable {
        endpoint: endpoint.to_string(),
        error,
    })?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .read_to_string()
        .map_err(|error| LeaderError::Unreachable {
            endpoint: endpoint.to_string(),
            error,
        })?;
    if !(200..300).contains(&status) {
        return Err(LeaderError::Status {
            endpoint: endpoint.to_string(),
            call,
            status,
            body,
        });
    }
    // The keep-alive stream may hold several messages, one per line: the first is ours.
    let first = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}");
    serde_json::from_str(first).map_err(|e| LeaderError::BadReply {
        endpoint: endpoint.to_string(),
        call,
        detail: format!("unreadable JSON ({e})"),
    })
}

/// An int64 as the gateway writes it: a string of digits (or a number).
fn int(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}

/// Base64 (standard alphabet, padded), as etcd's gateway encodes keys and values.
mod b64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for k in 0..4 {
                if k <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.trim_end_matches('=');
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_the_standard() {
        assert_eq!(
            b64::encode(b"/baton/baton/leader"),
            "L2JhdG9uL2JhdG9uL2xlYWRlcg=="
        );
        assert_eq!(b64::encode(b"ab"), "YWI=");
        assert_eq!(b64::encode(b""), "");
        for s in ["", "a", "ab", "abc", "http://10.0.0.1:7070"] {
            assert_eq!(
                b64::decode(&b64::encode(s.as_bytes())).as_deref(),
                Some(s.as_bytes())
            );
        }
        assert_eq!(b64::decode("not base64!"), None);
    }

    #[test]
    fn endpoints_are_checked_and_default_to_http() {
        let e = Etcd::new(
            vec!["127.0.0.1:2379, https://e:2379/".into()],
            Duration::from_secs(1),
        )
        .expect("endpoints");
        assert_eq!(e.endpoints, ["http://127.0.0.1:2379", "https://e:2379"]);
        assert!(matches!(
            Etcd::new(vec![" , ".into()], Duration::from_secs(1)),
            Err(LeaderError::NoEndpoints)
        ));
        assert!(matches!(
            Etcd::new(vec!["ftp://e:2379".into()], Duration::from_secs(1)),
            Err(LeaderError::BadEndpoint(_))
        ));
    }

    #[test]
    fn the_gateway_int64s_are_strings() {
        assert_eq!(
            int(&json!("7587868851958350860")),
            Some(7587868851958350860)
        );
        assert_eq!(int(&json!(5)), Some(5));
        assert_eq!(int(&Value::Null), None);
    }
}
