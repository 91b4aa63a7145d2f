//! Ingest of pprof batches, the debug-info store keyed by build ID, and the symbolizer that
//! names stored frames once their debug info arrives.
//!
//! `POST /api/v1/ingest?profiler=NAME&batch_id=ID&LABEL=VALUE…` takes a pprof file (gzip or
//! not) from an agent or from any producer; the labels in the query are set on every sample.
//! A batch id makes the call idempotent: a batch sent twice is stored once. The reply lists
//! the build IDs of unsymbolized frames that the server has no debug info for; an agent then
//! uploads each once with `PUT /api/v1/debuginfo/{build_id}`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::sync::lock;
use baton_model::{FrameKind, Labels};
use baton_store::{LateSymbol, Store};
use baton_symbolizer::ElfSymbolizer;

use crate::api::{DebugInfoFound, DebugInfoStored, Ingested};
use crate::error::ApiError;
use crate::state::{with_store, LatencyStat};
use crate::AppState;

/// Counters of the ingest endpoint.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub batches: AtomicU64,
    pub samples: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
    pub bytes: AtomicU64,
    pub latency: LatencyStat,
}

/// The ingest writer's queue: batches from concurrent ingest calls wait here and are written
/// together, by size and by time (one grouped write takes up to `group_rows` rows, and waits up
/// to `linger` after the first for more). Past `max_rows` rows queued, an ingest is refused with
/// 503 and its sender keeps the batch and retries: a slow store slows ingest and fills the
/// agents' disk buffers, never the server's memory.
pub struct IngestQueue {
    jobs: Mutex<std::collections::VecDeque<Job>>,
    wake: Condvar,
    pub max_rows: u64,
    pub group_rows: usize,
    pub linger: Duration,
    /// Rows waiting now.
    pub queued_rows: AtomicU64,
    /// Ingests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Grouped writes, and the batches and rows in them.
    pub writes: AtomicU64,
    pub written_batches: AtomicU64,
    pub written_rows: AtomicU64,
    pub write_latency: LatencyStat,
}

struct Job {
    batch: baton_model::Batch,
    id: Option<String>,
    host: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

impl IngestQueue {
    pub fn new(max_rows: u64, group_rows: usize, linger: Duration) -> IngestQueue {
        IngestQueue {
            jobs: Mutex::new(Default::default()),
            wake: Condvar::new(),
            max_rows,
            group_rows: group_rows.max(1),
            linger,
            queued_rows: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            written_batches: AtomicU64::new(0),
            written_rows: AtomicU64::new(0),
            write_latency: Default::default(),
        }
    }

    /// Queues a batch; `Err` when the queue is full (the caller answers 503).
    fn submit(
        &self,
        batch: baton_model::Batch,
        id: Option<String>,
        host: Option<String>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<bool, String>>, String> {
        let rows = batch.samples.len() as u64;
        let mut jobs = lock(&self.jobs);
        // Rows queued or being written; one batch is always taken when nothing waits.
        let queued = self.queued_rows.load(Ordering::Relaxed);
        if queued > 0 && queued + rows > self.max_rows {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "the store is behind: {queued} sample rows wait to be written (at most {}); send this batch again later",
                self.max_rows
            ));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queued_rows.fetch_add(rows, Ordering::Relaxed);
        jobs.push_back(Job {
            batch,
            id,
            host,
            reply: tx,
        });
        self.wake.notify_one();
        Ok(rx)
    }

    /// The writer: takes a group of queued batches, writes them in one call, answers each.
    /// Returns when `stop()` says so and the queue is empty.
    pub fn run(&self, store: &Mutex<Box<dyn Store>>, stop: fn() -> bool) {
        loop {
            let mut group: Vec<Job> = Vec::new();
            {
                let mut jobs = lock(&self.jobs);
                while jobs.is_empty() {
                    if stop() {
                        return;
                    }
                    jobs = self
                        .wake
                        .wait_timeout(jobs, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let first = Instant::now();
                let mut rows = 0usize;
                loop {
                    while let Some(j) = jobs.front() {
                        if !group.is_empty() && rows + j.batch.samples.len() > self.group_rows {
                            break;
                        }
                        rows += j.batch.samples.len();
                        if let Some(j) = jobs.pop_front() {
                            group.push(j);
                        }
                    }
                    let left = self.linger.saturating_sub(first.elapsed());
                    if rows >= self.group_rows || left.is_zero() || stop() {
                        break;
                    }
                    jobs = self
                        .wake
                        .wait_timeout(jobs, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    if jobs.is_empty() {
                        break;
                    }
                }
            }
            let t = Instant::now();
            let results = {
                let items: Vec<baton_store::WriteItem<'_>> = group
                    .iter()
                    .map(|j| baton_store::WriteItem {
                        batch: &j.batch,
                        batch_id: j.id.as_deref(),
                        host: j.host.as_deref(),
                    })
                    .collect();
                let mut s = lock(store);
                s.write_batches(&items)
            };
            self.write_latency.observe(t.elapsed());
            let rows: u64 = group.iter().map(|j| j.batch.samples.len() as u64).sum();
            self.queued_rows.fetch_sub(rows, Ordering::Relaxed);
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written_batches
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            self.written_rows.fetch_add(rows, Ordering::Relaxed);
            for (j, r) in group.into_iter().zip(results) {
                let _ = j.reply.send(r.map_err(|e| e.to_string()));
            }
        }
    }
}

/// Query keys that are not labels.
const RESERVED: &[&str] = &["profiler", "batch_id"];

/// `POST /api/v1/ingest`
pub(crate) async fn ingest(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let stats = st.ingest.clone();
    let refuse = |m: String| {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        ApiError(StatusCode::BAD_REQUEST, m)
    };
    let mut profiler = None;
    let mut batch_id = headers
        .get("x-baton-batch-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut labels = Labels::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "profiler" => profiler = Some(v.to_string()),
            "batch_id" => batch_id = Some(v.to_string()),
            key => {
                let ok = !key.is_empty()
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !RESERVED.contains(&key);
                if !ok {
                    return Err(refuse(format!(
                        "bad label name {key:?}: use lower-case letters, digits and _"
                    )));
                }
                labels.insert(key.to_string(), v.to_string());
            }
        }
    }
    if batch_id
        .as_ref()
        .is_some_and(|b| b.is_empty() || b.len() > 200)
    {
        return Err(refuse("batch_id must be 1 to 200 characters".into()));
    }
    if body.is_empty() {
        return Err(refuse("empty body: send a pprof file".into()));
    }
    stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let now = baton_model::time::now_ms();
    let decoded = tokio::task::spawn_blocking(move || {
        baton_model::wire::decode_batch(&body, profiler.as_deref(), &labels, now)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let batch = decoded.map_err(|e| refuse(e.to_string()))?;
    let rows = batch.samples.len() as u64;
    let host = batch
        .samples
        .first()
        .and_then(|s| s.labels.get("host").cloned());
    // Build IDs of frames left unnamed, for which the server has nothing yet.
    let mut unnamed: BTreeSet<String> = BTreeSet::new();
    for s in &batch.samples {
        for f in &s.stack {
            if f.kind == FrameKind::User && f.function.is_none() {
                if let Some(b) = &f.build_id {
                    unnamed.insert(b.clone());
                }
            }
        }
    }
    let bid = batch_id.clone();
    let stored = match &st.ingest_queue {
        // Grouped with concurrent batches by the writer; refused when it is behind.
        Some(q) => {
            let rx = q
                .submit(batch, bid, host)
                .map_err(|m| ApiError(StatusCode::SERVICE_UNAVAILABLE, m))?;
            rx.await
                .map_err(|_| {
                    ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the server is stopping".into(),
                    )
                })?
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?
        }
        None => {
            with_store(&st, move |s: &mut dyn Store| match &bid {
                Some(id) => s.write_batch_once(&batch, id, host.as_deref()),
                None => s.write_batch(&batch).map(|()| true),
            })
            .await?
        }
    };
    if stored {
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.samples.fetch_add(rows, Ordering::Relaxed);
    } else {
        stats.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    let missing: Vec<String> = match &st.debuginfo {
        Some(d) => {
            if !unnamed.is_empty() {
                d.wake();
            }
            unnamed.into_iter().filter(|b| d.claim(b)).collect()
        }
        None => Vec::new(),
    };
    stats.latency.observe(started.elapsed());
    Ok((
        if stored {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(Ingested {
            stored,
            duplicate: !stored,
            batch_id,
            sample_rows: rows,
            missing_build_ids: missing,
        }),
    )
        .into_response())
}

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
    pub uploads: AtomicU64,
    pub symbols_added: AtomicU64,
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
            uploads: AtomicU64::new(0),
            symbols_added: AtomicU64::new(0),
        }
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
            .and_then(|bytes| self.put(build_id, &bytes));
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
    /// has that build ID.
    pub fn put(&self, build_id: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        if !valid_build_id(build_id) {
            return Err(format!(
                "{build_id:?} is not a build ID (hex, 8 to 128 digits)"
            ));
        }
        // Agents send it gzip-compressed.
        let unzipped;
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
                .map_err(|e| format!("bad gzip stream: {e}"))?;
            unzipped = out;
            &unzipped[..]
        } else {
            bytes
        };
        if !bytes.starts_with(b"\x7fELF") {
            return Err("not an ELF file".into());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let tmp = self
            .dir
            .join(format!(".{build_id}.tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
        let found = baton_symbolizer::build_id_of(&tmp);
        if found.as_deref() != Some(build_id) {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "the file's build ID is {}, not {build_id}",
                found.as_deref().unwrap_or("absent")
            ));
        }
        let dest = self.dir.join(build_id);
        std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())?;
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
        let (mut g, _) = c
            .wait_timeout_while(g, timeout, |woken| !*woken)
            .unwrap_or_else(|p| p.into_inner());
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
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(d) = st.debuginfo.clone() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "this server keeps no debug info".into(),
        ));
    };
    let bid = build_id.clone();
    let size = body.len();
    tokio::task::spawn_blocking(move || d.put(&bid, &body))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_model::{Batch, StackSample, ValueType};

    fn batch(rows: usize) -> Batch {
        let mut b = Batch::new("cpu", vec![ValueType::cpu_nanoseconds()], 1_000);
        for i in 0..rows {
            b.samples.push(StackSample {
                stack: vec![],
                labels: [("pid".to_string(), i.to_string())].into(),
                value: 1,
                weight: 1.0,
                value_index: 0,
            });
        }
        b
    }

    fn stopped() -> bool {
        true
    }

    #[test]
    fn queued_batches_are_written_together_and_a_full_queue_refuses() {
        let store: Mutex<Box<dyn Store>> = Mutex::new(Box::new(
            baton_store::DuckDbStore::in_memory().expect("store"),
        ));
        let q = IngestQueue::new(25, 1_000, Duration::from_millis(10));
        let mut answers = Vec::new();
        for i in 0..3 {
            answers.push(
                q.submit(batch(8), Some(format!("b{i}")), None)
                    .expect("queued"),
            );
        }
        // 24 rows wait: one more batch of 8 is past the bound of 25.
        assert!(q.submit(batch(8), Some("b3".into()), None).is_err());
        assert_eq!(q.rejected.load(Ordering::Relaxed), 1);
        // The same id twice in one group is stored once.
        answers.push(q.submit(batch(1), Some("b0".into()), None).expect("queued"));
        q.run(&store, stopped);
        assert_eq!(q.writes.load(Ordering::Relaxed), 1, "one grouped write");
        assert_eq!(q.written_batches.load(Ordering::Relaxed), 4);
        assert_eq!(q.queued_rows.load(Ordering::Relaxed), 0);
        let got: Vec<Result<bool, String>> = answers
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("answered"))
            .collect();
        assert_eq!(got, vec![Ok(true), Ok(true), Ok(true), Ok(false)]);
        let rows = store.lock().expect("store").sample_rows().expect("rows");
        assert_eq!(rows, 24);
    }
}
