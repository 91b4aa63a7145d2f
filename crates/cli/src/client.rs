//! The HTTP client of every command that talks to a Baton server: base URL, bearer token and
//! TLS roots.
//!
//! The token comes from `--token-file`, else `$BATON_TOKEN_FILE`, else `$BATON_TOKEN`; extra
//! CA certificates (for a server with a private CA) from `--ca-file` or `$BATON_CA_FILE`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;

/// The global options of the client, set once from the command line.
#[derive(Debug, Default, Clone)]
pub struct ClientOptions {
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

static OPTIONS: OnceLock<ClientOptions> = OnceLock::new();

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

/// A client for one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Client> {
        Client::with_timeout(base, Duration::from_secs(120))
    }

    pub fn with_timeout(base: &str, timeout: Duration) -> anyhow::Result<Client> {
        let o = options();
        let token = match &o.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the token file {}", f.display()))?
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
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                anyhow::bail!("{}: no PEM certificate", ca.display());
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
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let resp = r.map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut body)
            .context("reading the response")?;
        Ok((status, body))
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        self.finish(req.call())
    }

    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        self.finish(req.send(body.to_string().as_bytes()))
    }

    pub fn post_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/octet-stream");
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        self.finish(req.send(&body[..]))
    }

    pub fn put_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/octet-stream");
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        self.finish(req.send(&body[..]))
    }
}
