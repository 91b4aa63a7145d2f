//! The HTTP client of everything that talks to a Baton server (the agent, and the commands that
//! query a server): base URLs with failover, bearer token and TLS roots.
//!
//! A client holds one or more servers, given as a list or as one comma-separated string
//! (`http://a:7070,http://b:7070`). A call goes to the current one. A connection error or a 5xx
//! answer moves the call on to the next, and a server that answers stays the current one
//! (sticky). A 503 or 421 carrying `X-Baton-Leader: URL` means "I am not the control plane, it
//! is there": the call goes to that URL, added to the list if absent. Clones share the current
//! server; [`Client::for_ingest`] gives a client with its own, which keeps to the first server
//! that answers and goes back to the first of the list a while after failing over, so that
//! agents split across servers ship to their own first one.
//!
//! The token comes from `--token-file`, else `$BATON_TOKEN_FILE`, else `$BATON_TOKEN`; extra
//! CA certificates (for a server with a private CA) from `--ca-file` or `$BATON_CA_FILE`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The most bytes of one answer from a server the agent reads.
const MAX_ANSWER_BYTES: u64 = 64 << 20;

use baton_model::sync;
use baton_server::leader::LEADER_HEADER;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("cannot reach {base}: {error}")]
    Unreachable { base: String, error: ureq::Error },
    #[error("reading the response of {base}")]
    Response {
        base: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no server URL given")]
    NoServer,
}

/// The global options of the client, set once from the command line.
#[derive(Debug, Default, Clone)]
pub struct ClientOptions {
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

static OPTIONS: OnceLock<ClientOptions> = OnceLock::new();

/// Sets the options every later [`Client`] uses; only the first call counts.
pub fn set_options(o: ClientOptions) {
    let _ = OPTIONS.set(o);
}

fn options() -> ClientOptions {
    let mut o = OPTIONS.get().cloned().unwrap_or_default();
    if o.token_file.is_none() {
        o.token_file = std::env::var_os("BATON_TOKEN_FILE").map(PathBuf::from);
    }
    if o.ca_file.is_none() {
        o.ca_file = std::env::var_os("BATON_CA_FILE").map(PathBuf::from);
    }
    o
}

/// A status code and a body.
pub type Reply = (u16, Vec<u8>);

/// The most a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an ingest client stays on a later server before it tries the first one again.
const BACK_TO_FIRST: Duration = Duration::from_secs(30);

/// The servers and which one calls go to.
#[derive(Debug)]
struct Servers {
    urls: Vec<String>,
    current: usize,
    /// When `current` last changed.
    moved_at: Instant,
}

/// A client for one server, or several with failover.
#[derive(Clone)]
pub struct Client {
    servers: Arc<Mutex<Servers>>,
    /// Ingest: go back to the first server a while after failing over.
    prefer_first: bool,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (urls, base) = (self.servers(), self.base());
        f.debug_struct("Client")
            .field("servers", &urls)
            .field("base", &base)
            .finish()
    }
}

/// The URLs of a comma-separated list, without trailing slashes; empty items are skipped.
pub fn split_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// One answer, with the leader a follower pointed to.
struct Answer {
    status: u16,
    body: Vec<u8>,
    leader: Option<String>,
}

impl Client {
    /// A client of `base`: one URL, or several separated by commas.
    pub fn new(base: &str) -> Result<Client, ClientError> {
        Client::with_timeout(base, Duration::from_secs(120))
    }

    /// As [`Client::new`], each call (one try on one server) limited to `timeout`.
    pub fn with_timeout(base: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::with_servers(&split_servers(base), timeout)
    }

    /// A client of these servers, tried in this order.
    pub fn with_servers(servers: &[String], timeout: Duration) -> Result<Client, ClientError> {
        let urls: Vec<String> = servers.iter().flat_map(|s| split_servers(s)).collect();
        if urls.is_empty() {
            return Err(ClientError::NoServer);
        }
        let o = options();
        let token = match &o.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|source| ClientError::TokenFile {
                        path: f.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("BATON_TOKEN")
                .ok()
                .map(|t| t.trim().to_string()),
        }
        .filter(|t| !t.is_empty());
        // A server that does not accept the connection soon is skipped for the next.
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)));
        if let Some(ca) = &o.ca_file {
            let pem = std::fs::read(ca).map_err(|source| ClientError::CaFile {
                path: ca.clone(),
                source,
            })?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(ClientError::NoCertificate(ca.clone()));
            }
            cfg = cfg.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                    .build(),
            );
        }
        Ok(Client {
            servers: Arc::new(Mutex::new(Servers {
                urls,
                current: 0,
                moved_at: Instant::now(),
            })),
            prefer_first: false,
            token,
            agent: cfg.build().into(),
        })
    }

    /// A client of the same servers whose current one is its own, starting at the first: the
    /// agent's uploads go to its first reachable server, wherever the control plane is.
    pub fn for_ingest(&self) -> Client {
        let urls = sync::lock(&self.servers).urls.clone();
        Client {
            servers: Arc::new(Mutex::new(Servers {
                urls,
                current: 0,
                moved_at: Instant::now(),
            })),
            prefer_first: true,
            token: self.token.clone(),
            agent: self.agent.clone(),
        }
    }

    /// The server calls go to now: the last one that answered.
    pub fn base(&self) -> String {
        let s = sync::lock(&self.servers);
        s.urls[s.current].clone()
    }

    /// Every server this client knows, in order (leaders it was sent to come last).
    pub fn servers(&self) -> Vec<String> {
        sync::lock(&self.servers).urls.clone()
    }

    /// Where a call starts: the current server, or the first for ingest after a while away.
    fn start(&self) -> usize {
        let mut s = sync::lock(&self.servers);
        if self.prefer_first && s.current != 0 && s.moved_at.elapsed() >= BACK_TO_FIRST {
            s.current = 0;
            s.moved_at = Instant::now();
        }
        s.current
    }

    /// The URL at `i`, and how many there are.
    fn url(&self, i: usize) -> (String, usize) {
        let s = sync::lock(&self.servers);
        (s.urls[i].clone(), s.urls.len())
    }

    /// The index of `url`, added at the end if absent.
    fn index_of(&self, url: &str) -> usize {
        let mut s = sync::lock(&self.servers);
        match s.urls.iter().position(|u| u == url) {
            Some(i) => i,
            None => {
                s.urls.push(url.to_string());
                s.urls.len() - 1
            }
        }
    }

    /// Makes `i` the current server.
    fn stick(&self, i: usize) {
        let mut s = sync::lock(&self.servers);
        if s.current != i {
            s.current = i;
            s.moved_at = Instant::now();
        }
    }

    /// Sends a request built by `send` for a base URL to the servers in turn, as the module
    /// says: each server at most once per call. When none answers well, the last answer (or
    /// error) is returned.
    fn call<F>(&self, send: F) -> Result<Reply, ClientError>
    where
        F: Fn(&str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    {
        let mut i = self.start();
        let mut tried: Vec<usize> = Vec::new();
        // The last server that answered at all: better to start from next time than a dead one.
        let mut answered = None;
        loop {
            let (base, n) = self.url(i);
            tried.push(i);
            let r = read_answer(&base, send(&base));
            if r.is_ok() {
                answered = Some(i);
            }
            let next = match &r {
                Ok(a) if matches!(a.status, 503 | 421) && a.leader.is_some() => {
                    a.leader.as_deref().map(|l| self.index_of(l))
                }
                Ok(a) if a.status < 500 => None,
                _ => Some((i + 1) % n),
            };
            match next {
                Some(j) if !tried.contains(&j) => {
                    tracing::debug!(from = %base, to = %self.url(j).0, "trying another server");
                    i = j;
                }
                _ => {
                    if let Some(j) = answered {
                        self.stick(j);
                    }
                    return r.map(|a| (a.status, a.body));
                }
            }
        }
    }

    /// The request with the bearer token, when there is one.
    fn authed<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.call(|base| self.authed(self.agent.get(format!("{base}{path}"))).call())
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Reply, ClientError> {
        let body = body.to_string();
        self.call(|base| {
            let req = self.agent.post(format!("{base}{path}"));
            let req = self.authed(req.header("content-type", "application/json"));
            req.send(body.as_bytes())
        })
    }

    pub fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<Reply, ClientError> {
        self.call(|base| {
            let req = self.agent.post(format!("{base}{path}"));
            let req = self.authed(req.header("content-type", "application/octet-stream"));
            req.send(&body[..])
        })
    }

    pub fn put_bytes(&self, path: &str, body: Vec<u8>) -> Result<Reply, ClientError> {
        self.call(|base| {
            let req = self.agent.put(format!("{base}{path}"));
            let req = self.authed(req.header("content-type", "application/octet-stream"));
            req.send(&body[..])
        })
    }
}

/// The status, body and leader header of a response.
fn read_answer(
    base: &str,
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Answer, ClientError> {
    let resp = r.map_err(|error| ClientError::Unreachable {
        base: base.to_string(),
        error,
    })?;
    let status = resp.status().as_u16();
    let leader = resp
        .headers()
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_end_matches('/'))
        .filter(|v| v.starts_with("http://") || v.starts_with("https://"))
        .map(str::to_string);
    // A server's answer (a config, a run list) is read up to a cap, so a broken or hostile
    // server cannot make the agent allocate without bound.
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|source| ClientError::Response {
            base: base.to_string(),
            source,
        })?;
    if body.len() as u64 > MAX_ANSWER_BYTES {
        return Err(ClientError::Response {
            base: base.to_string(),
            source: std::io::Error::other(format!("the answer is over {MAX_ANSWER_BYTES} bytes")),
        });
    }
    Ok(Answer {
        status,
        body,
        leader,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server on a free port that answers each request with the status and extra header
    /// lines `answer` gives for its path, and its own name as the body. Returns its URL and
    /// how many requests it had.
    fn serve(
        name: &'static str,
        answer: impl Fn(&str) -> (u16, String) + Send + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let (mut first, mut len) = (String::new(), 0usize);
                let _ = r.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                counted.fetch_add(1, Ordering::SeqCst);
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, headers) = answer(&path);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{name}",
                    name.len()
                );
            }
        });
        (url, count)
    }

    fn text(r: Result<Reply, ClientError>) -> (u16, String) {
        let (code, body) = r.expect("an answer");
        (code, String::from_utf8(body).expect("utf-8"))
    }

    #[test]
    fn lists_are_split_on_commas() {
        assert_eq!(
            split_servers(" http://a:7070/, ,http://b:7070"),
            ["http://a:7070", "http://b:7070"]
        );
        assert!(matches!(Client::new(" , "), Err(ClientError::NoServer)));
    }

    #[test]
    fn a_follower_sends_the_call_to_the_leader_and_the_client_stays_there() {
        let (leader, _) = serve("leader", |_| (200, String::new()));
        let to = leader.clone();
        let (follower, asked) = serve("follower", move |_| {
            (503, format!("{LEADER_HEADER}: {to}/\r\n"))
        });
        let c = Client::new(&follower).expect("client");
        assert_eq!(text(c.get("/api/v1/hosts")), (200, "leader".into()));
        assert_eq!(c.base(), leader);
        assert_eq!(c.servers(), [follower, leader]);
        assert_eq!(text(c.get("/api/v1/hosts")), (200, "leader".into()));
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "the follower is asked once"
        );
    }

    #[test]
    fn dead_and_failing_servers_are_skipped_and_the_one_that_answers_sticks() {
        let dead = format!("http://127.0.0.1:{}", {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        });
        let (failing, failed) = serve("failing", |_| (500, String::new()));
        let (ok, _) = serve("ok", |_| (200, String::new()));
        let c = Client::with_servers(&[dead, format!("{failing},{ok}")], Duration::from_secs(5))
            .expect("client");
        assert_eq!(
            text(c.post_json("/x", &serde_json::json!({}))),
            (200, "ok".into())
        );
        assert_eq!(c.base(), ok);
        assert_eq!(text(c.post_bytes("/x", vec![1, 2, 3])), (200, "ok".into()));
        assert_eq!(
            failed.load(Ordering::SeqCst),
            1,
            "the failing one is tried once"
        );
    }

    #[test]
    fn one_server_answers_as_before_and_none_is_an_error() {
        let (busy, _) = serve("busy", |_| (503, String::new()));
        let c = Client::new(&busy).expect("client");
        assert_eq!(text(c.get("/api/v1/ingest")), (503, "busy".into()));
        let dead = format!("http://127.0.0.1:{}", {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        });
        let c = Client::new(&dead).expect("client");
        assert!(matches!(c.get("/"), Err(ClientError::Unreachable { .. })));
    }

    #[test]
    fn ingest_stays_on_the_first_server_while_control_follows_the_leader() {
        let (b, _) = serve("b", |_| (200, String::new()));
        let to = b.clone();
        let (a, _) = serve("a", move |path| {
            if path.starts_with("/api/v1/ingest") {
                (200, String::new())
            } else {
                (503, format!("{LEADER_HEADER}: {to}\r\n"))
            }
        });
        let control = Client::new(&format!("{a},{b}")).expect("client");
        let ingest = control.for_ingest();
        let hb = control.post_json("/api/v1/agents/heartbeat", &serde_json::json!({}));
        assert_eq!(text(hb), (200, "b".into()));
        let sent = ingest.post_bytes("/api/v1/ingest?batch_id=1", vec![0; 10]);
        assert_eq!(text(sent), (200, "a".into()));
        assert_eq!((control.base(), ingest.base()), (b, a));
    }
}
