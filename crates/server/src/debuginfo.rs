//! The debug-info store, keyed by build ID, and the symbolizer that names stored frames once
//! their debug info arrives (from an agent's upload, a local debug directory or debuginfod).
//!
//! An ingest reply lists the build IDs the server has nothing for; one agent then uploads each
//! with `PUT /api/v1/debuginfo/{build_id}`, and the symbolizer thread is woken.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::sync::{lock, wait_timeout_while};
use baton_store::{LateSymbol, Store};
use baton_symbolizer::ElfSymbolizer;

use crate::api::{DebugInfoFound, DebugInfoStored};
use crate::error::ApiError;
use crate::AppState;

/// Where debug info is found, by build ID: the store's own directory (uploads and debuginfod
/// downloads), the local debug directories, then a debuginfod server if one is configured.
pub struct DebugInfo {
    dir: PathBuf,
    debug_dirs: Vec<PathBuf>,
    debuginfod: Option<String>,
    /// When a debuginfod lookup last failed, per build ID (tried again after 10 minutes).
    misses: Mutex<HashMap<String, Instant>>,
    /// When an agent was last asked for a build ID: one agent uploads it, not every agent that
    /// has it (asked again after 10 minutes if nothing came).
    asked: Mutex<HashMap<String, Instant>>,
    wake: (Mutex<bool>, Condvar),
    /// Most bytes one file may have once decompressed, and all the directory's files together.
    max_bytes: u64,
    max_space: u64,
    pub uploads: AtomicU64,
    /// Uploads refused: malformed, too big, no room, or the wrong build ID.
    pub refused: AtomicU64,
    pub symbols_added: AtomicU64,
}

/// An upload refused, with the HTTP status it gets.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl Refused {
    fn bad(message: impl Into<String>) -> Refused {
        Refused {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn valid_build_id(b: &str) -> bool {
    (8..=128).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_hexdigit())
}

impl DebugInfo {
    pub fn new(dir: PathBuf, debug_dirs: Vec<PathBuf>, debuginfod: Option<String>) -> DebugInfo {
        DebugInfo {
            dir,
            debug_dirs,
            debuginfod: debuginfod.map(|u| u.trim_end_matches('/').to_string()),
            misses: Mutex::new(HashMap::new()),
            asked: Mutex::new(HashMap::new()),
            wake: (Mutex::new(false), Condvar::new()),
            max_bytes: 1 << 30,
            max_space: 20 << 30,
            uploads: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            symbols_added: AtomicU64::new(0),
        }
    }

    /// Caps one file's decompressed size and the directory's total (`--max-debuginfo-bytes`,
    /// `--debuginfo-space`).
    pub fn with_limits(mut self, max_bytes: u64, max_space: u64) -> DebugInfo {
        self.max_bytes = max_bytes;
        self.max_space = max_space;
        self
    }

    /// Bytes the directory's files take.
    fn space_used(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The file for `build_id` on this machine, without asking the network.
    pub fn local(&self, build_id: &str) -> Option<PathBuf> {
        if !valid_build_id(build_id) {
            return None;
        }
        let own = self.dir.join(build_id);
        if own.is_file() {
            return Some(own);
        }
        let (head, tail) = build_id.split_at(2);
        self.debug_dirs
            .iter()
            .map(|d| d.join(".build-id").join(head).join(format!("{tail}.debug")))
            .find(|p| p.is_file())
    }

    pub fn has_local(&self, build_id: &str) -> bool {
        self.local(build_id).is_some()
    }

    /// Whether to ask the sender of a batch for `build_id`'s file: only when the server has
    /// nothing for it and has not asked anyone in the last 10 minutes.
    pub fn claim(&self, build_id: &str) -> bool {
        if !valid_build_id(build_id) || self.has_local(build_id) {
            return false;
        }
        let mut asked = lock(&self.asked);
        match asked.get(build_id) {
            Some(t) if t.elapsed() < Duration::from_secs(600) => false,
            _ => {
                asked.insert(build_id.to_string(), Instant::now());
                true
            }
        }
    }

    /// The file for `build_id`, downloading it from debuginfod when configured.
    pub fn find(&self, build_id: &str) -> Option<PathBuf> {
        if let Some(p) = self.local(build_id) {
            return Some(p);
        }
        let url = self.debuginfod.as_ref()?;
        {
            let misses = lock(&self.misses);
            if misses
                .get(build_id)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(600))
            {
                return None;
            }
        }
        let got = fetch(&format!("{url}/buildid/{build_id}/debuginfo"))
            .and_then(|bytes| self.put(build_id, &bytes).map_err(|e| e.message));
        match got {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::info!(build_id, error = %e, "debuginfod has nothing");
                lock(&self.misses).insert(build_id.to_string(), Instant::now());
                None
            }
        }
    }

    /// Stores an ELF file (as is, or gzip-compressed) under its build ID, after checking that it
    /// has that build ID. The file's name is the build ID, checked to be hex: nothing of the path
    /// comes from the input. It is decompressed straight to disk, within the caps.
    pub fn put(&self, build_id: &str, bytes: &[u8]) -> Result<PathBuf, Refused> {
        let r = self.put_checked(build_id, bytes);
        if r.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn put_checked(&self, build_id: &str, bytes: &[u8]) -> Result<PathBuf, Refused> {
        use baton_model::limits::{inflate_to, LimitError};
        if !valid_build_id(build_id) {
            return Err(Refused::bad(format!(
                "{build_id:?} is not a build ID (hex, 8 to 128 digits)"
            )));
        }
        let internal = |e: std::io::Error| Refused {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(internal)?;
        let used = self.space_used();
        if used >= self.max_space {
            return Err(Refused {
                status: StatusCode::INSUFFICIENT_STORAGE,
                message: format!(
                    "the debug-info directory is full: {used} of {} bytes (--debuginfo-space)",
                    self.max_space
                ),
            });
        }
        let tmp = self
            .dir
            .join(format!(".{build_id}.tmp{}", std::process::id()));
        let written = std::fs::File::create(&tmp).map_err(internal).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            let cap = self.max_bytes.min(self.max_space - used);
            let n = inflate_to(
                bytes,
                bytes.starts_with(&[0x1f, 0x8b]),
                &mut w,
                cap,
                b"\x7fELF",
            )
            .map_err(|e| match e {
                LimitError::TooLarge { .. } => Refused {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "the debug info is over {cap} bytes decompressed \
                                 (--max-debuginfo-bytes, --debuginfo-space)"
                    ),
                },
                LimitError::Malformed(m) => Refused::bad(format!("not an ELF file: {m}")),
            })?;
            std::io::Write::flush(&mut w).map_err(internal)?;
            Ok(n)
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let found = baton_symbolizer::build_id_of(&tmp);
        if found.as_deref() != Some(build_id) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Refused::bad(format!(
                "the file's build ID is {}, not {build_id}",
                found.as_deref().unwrap_or("absent")
            )));
        }
        let dest = self.dir.join(build_id);
        std::fs::rename(&tmp, &dest).map_err(internal)?;
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.wake();
        Ok(dest)
    }

    /// Asks the symbolizer thread to look again now.
    pub fn wake(&self) {
        let (m, c) = &self.wake;
        *lock(m) = true;
        c.notify_all();
    }

    /// Waits for [`DebugInfo::wake`] or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let (m, c) = &self.wake;
        let g = lock(m);
        let mut g = wait_timeout_while(c, g, timeout, |woken| !*woken);
        *g = false;
    }
}

fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let resp = ureq::get(url)
        .config()
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .call()
        .map_err(|e| e.to_string())?;
    resp.into_body()
        .with_config()
        .limit(2 << 30)
        .read_to_vec()
        .map_err(|e| e.to_string())
}

/// One pass of delayed symbolization: every stored frame that waits for a name and whose
/// build ID now has debug info gets its symbol. Returns the symbols added.
pub fn symbolize_pending(
    store: &Mutex<Box<dyn Store>>,
    debuginfo: &DebugInfo,
    resolver: &ElfSymbolizer,
) -> Result<usize, baton_store::StoreError> {
    let waiting = lock(store).unsymbolized(200_000)?;
    let mut added = 0;
    for w in waiting {
        let Some(path) = debuginfo.find(&w.build_id) else {
            continue;
        };
        let syms: Vec<LateSymbol> = resolver
            .file_offsets(&path, &w.offsets)
            .into_iter()
            .zip(&w.offsets)
            .filter_map(|(s, &offset)| {
                s.map(|s| LateSymbol {
                    offset,
                    function: s.function,
                    file: s.file,
                    line: s.line,
                    // Innermost first, as frames are ordered leaf first.
                    inlined: s.inlined.into_iter().rev().collect(),
                })
            })
            .collect();
        if syms.is_empty() {
            continue;
        }
        let n = lock(store).add_symbols(&w.build_id, &syms)?;
        tracing::info!(build_id = %w.build_id, module = %w.module, symbols = n, "symbolized late");
        added += n;
    }
    debuginfo
        .symbols_added
        .fetch_add(added as u64, Ordering::Relaxed);
    Ok(added)
}

/// Runs [`symbolize_pending`] whenever woken (an upload, a batch with unnamed frames) and
/// every 10 s, until `stop` says so.
pub fn symbolizer_loop(
    store: &Mutex<Box<dyn Store>>,
    debuginfo: &DebugInfo,
    stop: impl Fn() -> bool,
) {
    let resolver = ElfSymbolizer::default();
    while !stop() {
        if let Err(e) = symbolize_pending(store, debuginfo, &resolver) {
            tracing::warn!(error = %e, "delayed symbolization failed");
        }
        debuginfo.wait(Duration::from_secs(10));
    }
}

/// `PUT /api/v1/debuginfo/{build_id}`: an ELF file with symbols or DWARF for that build ID.
pub(crate) async fn put_debuginfo(
    State(st): State<AppState>,
    Path(build_id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(d) = st.debuginfo.clone() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "this server keeps no debug info".into(),
        ));
    };
    // A body over the route's limit is refused (413) before it is read whole, and counted.
    let body = body.map_err(|e| {
        d.refused.fetch_add(1, Ordering::Relaxed);
        ApiError(e.status(), e.body_text())
    })?;
    let bid = build_id.clone();
    let size = body.len();
    tokio::task::spawn_blocking(move || d.put(&bid, &body))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(e.status, e.message))?;
    tracing::info!(build_id, size, "debug info uploaded");
    Ok((
        StatusCode::CREATED,
        Json(DebugInfoStored {
            build_id,
            bytes: size,
        }),
    )
        .into_response())
}

/// `GET /api/v1/debuginfo/{build_id}`: 200 when the server has it (locally), else 404.
pub(crate) async fn has_debuginfo(
    State(st): State<AppState>,
    Path(build_id): Path<String>,
) -> Result<Response, ApiError> {
    let found = st
        .debuginfo
        .as_ref()
        .and_then(|d| d.local(&build_id))
        .map(|p| p.display().to_string());
    match found {
        Some(path) => Ok(Json(DebugInfoFound { build_id, path }).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no debug info for {build_id}"),
        )),
    }
}

/// The default local debug directory.
pub fn default_debug_dirs() -> Vec<PathBuf> {
    let d = FsPath::new("/usr/lib/debug");
    vec![d.to_path_buf()]
}
