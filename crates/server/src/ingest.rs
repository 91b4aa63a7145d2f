//! Ingest of pprof batches: the endpoint, its counters, and the writer's queue that groups
//! concurrent batches into one store write.
//!
//! `POST /api/v1/ingest?profiler=NAME&batch_id=ID&LABEL=VALUE…` takes a pprof file (gzip or
//! not) from an agent or from any producer; the labels in the query are set on every sample.
//! A batch id makes the call idempotent: a batch sent twice is stored once. The reply lists
//! the build IDs of unsymbolized frames that the server has no debug info for; an agent then
//! uploads each once with `PUT /api/v1/debuginfo/{build_id}`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::sync::{lock, wait_timeout};
use baton_model::FrameKind;
use baton_store::Store;

use crate::api::Ingested;
use crate::error::ApiError;
use crate::state::{with_store, LatencyStat};
use crate::AppState;

pub use crate::debuginfo::{default_debug_dirs, symbolize_pending, symbolizer_loop, DebugInfo};

/// Counters of the ingest endpoint.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub batches: AtomicU64,
    pub samples: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
    /// Of the refused, those past a size or count cap (413).
    pub too_large: AtomicU64,
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
                    jobs = wait_timeout(&self.wake, jobs, Duration::from_millis(200));
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
                    jobs = wait_timeout(&self.wake, jobs, left);
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

/// `POST /api/v1/ingest`
pub(crate) async fn ingest(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let stats = st.ingest.clone();
    let refuse = |m: String| {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        ApiError(StatusCode::BAD_REQUEST, m)
    };
    let too_large = |m: String| {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        stats.too_large.fetch_add(1, Ordering::Relaxed);
        ApiError(StatusCode::PAYLOAD_TOO_LARGE, m)
    };
    // A body over the route's limit is refused before it is read whole.
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(format!(
            "{} (the limit is --max-body-bytes, {} bytes)",
            e.body_text(),
            st.limits.max_bytes
        )),
        _ => refuse(e.body_text()),
    })?;
    let header_batch_id = headers
        .get("x-baton-batch-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let baton_model::wire::IngestQuery {
        profiler,
        batch_id,
        labels,
    } = baton_model::wire::parse_ingest_query(q.as_deref().unwrap_or(""), header_batch_id)
        .map_err(refuse)?;
    if body.is_empty() {
        return Err(refuse("empty body: send a pprof file".into()));
    }
    stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let now = baton_model::time::now_ms();
    let limits = st.limits;
    let decoded = tokio::task::spawn_blocking(move || {
        baton_model::wire::decode_batch_within(&body, profiler.as_deref(), &labels, now, &limits)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let batch = decoded.map_err(|e| {
        if e.too_large() {
            too_large(e.to_string())
        } else {
            refuse(e.to_string())
        }
    })?;
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
