//! The HTTP client of everything that talks to a Baton server (the agent, and the commands that
//! query a server): base URL, bearer token and TLS roots.
//!
//! The token comes from `--token-file`, else `$BATON_TOKEN_FILE`, else `$BATON_TOKEN`; extra
//! CA certificates (for a server with a private CA) from `--ca-file` or `$BATON_CA_FILE`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
    #[error("reading the response")]
    Response(#[source] std::io::Error),
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

/// A client for one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    pub fn new(base: &str) -> Result<Client, ClientError> {
        Client::with_timeout(base, Duration::from_secs(120))
    }

    pub fn with_timeout(base: &str, timeout: Duration) -> Result<Client, ClientError> {
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
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout));
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
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: cfg.build().into(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn finish(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ClientError> {
        let resp = r.map_err(|error| ClientError::Unreachable {
            base: self.base.clone(),
            error,
        })?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut body)
            .map_err(ClientError::Response)?;
        Ok((status, body))
    }

    /// The request with the bearer token, when there is one.
    fn authed<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply, ClientError> {
        let req = self.authed(self.agent.get(format!("{}{path}", self.base)));
        self.finish(req.call())
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Reply, ClientError> {
        let req = self.agent.post(format!("{}{path}", self.base));
        let req = self.authed(req.header("content-type", "application/json"));
        self.finish(req.send(body.to_string().as_bytes()))
    }

    pub fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<Reply, ClientError> {
        let req = self.agent.post(format!("{}{path}", self.base));
        let req = self.authed(req.header("content-type", "application/octet-stream"));
        self.finish(req.send(&body[..]))
    }

    pub fn put_bytes(&self, path: &str, body: Vec<u8>) -> Result<Reply, ClientError> {
        let req = self.agent.put(format!("{}{path}", self.base));
        let req = self.authed(req.header("content-type", "application/octet-stream"));
        self.finish(req.send(&body[..]))
    }
}
