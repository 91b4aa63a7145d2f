//! The agent's outbox: every batch waits on disk until the server has acknowledged it.
//!
//! A batch is written as `SEQ-ROWS-ID.pb.gz` (gzip pprof, the wire format) before anything is
//! sent, so a server outage or an agent restart loses nothing: the shipper sends the oldest
//! file first and deletes it only once the server answered. The id travels with the batch and
//! the server stores each id once, so a retry after a lost answer is not counted twice. When
//! the files pass `--buffer-max`, the oldest are dropped, and every dropped batch and row is
//! counted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use baton_model::{sync, Batch, FrameKind};

use crate::client::Client;
use crate::Error;

struct Entry {
    path: PathBuf,
    id: String,
    rows: u64,
    bytes: u64,
}

#[derive(Default)]
struct State {
    seq: u64,
    files: VecDeque<Entry>,
    bytes: u64,
    /// The file being sent now: never dropped under the shipper.
    in_flight: Option<PathBuf>,
}

/// Counters, exported on the agent's `/metrics`.
#[derive(Debug, Default)]
pub struct OutboxStats {
    pub produced_rows: AtomicU64,
    pub shipped_rows: AtomicU64,
    pub shipped_batches: AtomicU64,
    pub dropped_rows: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub refused_batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub send_errors: AtomicU64,
    pub debuginfo_uploads: AtomicU64,
}

pub struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    /// Prefix of this process's batch ids: host and start time.
    id_prefix: String,
    state: Mutex<State>,
    cond: Condvar,
    pub stats: OutboxStats,
    /// Module path of each build ID seen in a batch, for debug-info uploads.
    modules: Mutex<HashMap<String, String>>,
}

impl Outbox {
    /// Opens the buffer directory and picks up the batches a previous run left there.
    pub fn open(dir: &Path, max_bytes: u64, id_prefix: String) -> Result<Outbox, Error> {
        std::fs::create_dir_all(dir).map_err(|error| Error::BufferDir {
            dir: dir.to_path_buf(),
            error,
        })?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".pb.gz") else {
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            };
            let mut parts = stem.splitn(3, '-');
            let (Some(seq), Some(rows), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(seq), Ok(rows)) = (seq.parse::<u64>(), rows.parse::<u64>()) else {
                continue;
            };
            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            found.push((
                seq,
                Entry {
                    path: e.path(),
                    id: id.to_string(),
                    rows,
                    bytes,
                },
            ));
        }
        found.sort_by_key(|(s, _)| *s);
        let mut st = State {
            seq: found.last().map(|(s, _)| s + 1).unwrap_or(0),
            ..Default::default()
        };
        for (_, e) in found {
            st.bytes += e.bytes;
            st.files.push_back(e);
        }
        if !st.files.is_empty() {
            eprintln!(
                "baton agent: {} batch(es) ({} bytes) left in {} from before; sending them first",
                st.files.len(),
                st.bytes,
                dir.display()
            );
        }
        Ok(Outbox {
            dir: dir.to_path_buf(),
            max_bytes,
            id_prefix,
            state: Mutex::new(st),
            cond: Condvar::new(),
            stats: OutboxStats::default(),
            modules: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    /// Batches and bytes waiting.
    pub fn pending(&self) -> (usize, u64) {
        let st = self.lock();
        (st.files.len(), st.bytes)
    }

    /// Writes a batch to disk; the shipper sends it when it can.
    pub fn push(&self, batch: &Batch) -> std::io::Result<()> {
        let rows = batch.samples.len() as u64;
        {
            let mut m = sync::lock(&self.modules);
            for s in &batch.samples {
                for f in &s.stack {
                    if f.kind == FrameKind::User && f.function.is_none() {
                        if let Some(b) = &f.build_id {
                            if !m.contains_key(b) && f.module.starts_with('/') {
                                m.insert(b.clone(), f.module.clone());
                            }
                        }
                    }
                }
            }
        }
        let bytes = baton_model::wire::encode_batch(batch);
        let mut st = self.lock();
        let seq = st.seq;
        st.seq += 1;
        let id = format!("{}.{seq}", self.id_prefix);
        let path = self.dir.join(format!("{seq:016}-{rows}-{id}.pb.gz"));
        let tmp = path.with_extension("tmp");
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_data()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        self.stats.produced_rows.fetch_add(rows, Ordering::Relaxed);
        if let Err(e) = written {
            // A full or broken disk: the batch is lost, and counted as dropped (so produced =
            // shipped + dropped + buffered still holds), and its partial file goes.
            let _ = std::fs::remove_file(&tmp);
            self.stats.dropped_rows.fetch_add(rows, Ordering::Relaxed);
            self.stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        st.bytes += bytes.len() as u64;
        st.files.push_back(Entry {
            path,
            id,
            rows,
            bytes: bytes.len() as u64,
        });
        // Over the limit: drop the oldest (but never the one on the wire, nor the newest).
        while st.bytes > self.max_bytes && st.files.len() > 1 {
            let i = match &st.in_flight {
                Some(p) if st.files.front().is_some_and(|e| &e.path == p) => 1,
                _ => 0,
            };
            if i >= st.files.len() - 1 {
                break;
            }
            let Some(e) = st.files.remove(i) else { break };
            let _ = std::fs::remove_file(&e.path);
            st.bytes -= e.bytes;
            self.stats.dropped_rows.fetch_add(e.rows, Ordering::Relaxed);
            self.stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(batch = %e.id, rows = e.rows, "buffer full: dropped the oldest batch");
        }
        drop(st);
        self.cond.notify_all();
        Ok(())
    }

    /// Sends batches, oldest first, until `stop()`; then returns (what is left stays on disk).
    /// Batches go to the first of the client's servers that answers, wherever the control
    /// plane is (any server takes ingest): see [`Client::for_ingest`].
    pub fn ship_loop(
        &self,
        client: &Client,
        host: &str,
        upload_debuginfo: bool,
        stop: impl Fn() -> bool,
    ) {
        let client = &client.for_ingest();
        let mut backoff = Duration::from_millis(250);
        let mut uploaded: HashSet<String> = HashSet::new();
        while !stop() {
            let next = {
                let mut st = self.lock();
                if st.files.is_empty() {
                    st = sync::wait_timeout(&self.cond, st, Duration::from_millis(500));
                }
                let n = st
                    .files
                    .front()
                    .map(|e| (e.path.clone(), e.id.clone(), e.rows));
                st.in_flight = n.as_ref().map(|(p, _, _)| p.clone());
                n
            };
            let Some((path, id, rows)) = next else {
                continue;
            };
            let body = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "a buffered batch is unreadable; dropping it");
                    self.forget(&path, rows, true);
                    continue;
                }
            };
            let query = format!("/api/v1/ingest?batch_id={}&host={}", enc(&id), enc(host));
            match client.post_bytes(&query, body) {
                Ok((code, reply)) if (200..300).contains(&code) => {
                    backoff = Duration::from_millis(250);
                    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
                    if v["duplicate"] == true {
                        self.stats.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                    }
                    self.stats.shipped_rows.fetch_add(rows, Ordering::Relaxed);
                    self.stats.shipped_batches.fetch_add(1, Ordering::Relaxed);
                    self.forget(&path, rows, false);
                    if upload_debuginfo {
                        if let Some(missing) = v["missing_build_ids"].as_array() {
                            for b in missing.iter().filter_map(|b| b.as_str()) {
                                if uploaded.insert(b.to_string()) {
                                    self.upload(client, b);
                                }
                            }
                        }
                    }
                }
                Ok((code, reply)) if code == 400 || code == 413 => {
                    // The server will never take this one: keep going with the rest.
                    tracing::error!(batch = %id, code, reply = %String::from_utf8_lossy(&reply), "the server refused a batch");
                    self.stats.refused_batches.fetch_add(1, Ordering::Relaxed);
                    self.forget(&path, rows, true);
                }
                other => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    match other {
                        Ok((code, reply)) => {
                            tracing::warn!(code, reply = %String::from_utf8_lossy(&reply), "sending a batch failed; will retry")
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "the server is unreachable; batches wait on disk")
                        }
                    }
                    self.lock().in_flight = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.lock().in_flight = None;
    }

    /// Removes a sent (or hopeless) batch from the buffer.
    fn forget(&self, path: &Path, rows: u64, dropped: bool) {
        let mut st = self.lock();
        if let Some(i) = st.files.iter().position(|e| e.path == path) {
            if let Some(e) = st.files.remove(i) {
                st.bytes -= e.bytes;
            }
        }
        st.in_flight = None;
        let _ = std::fs::remove_file(path);
        if dropped {
            self.stats.dropped_rows.fetch_add(rows, Ordering::Relaxed);
            self.stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Uploads the symbol and debug sections of the ELF file with `build_id`, so the server can
    /// name its frames.
    fn upload(&self, client: &Client, build_id: &str) {
        let module = sync::lock(&self.modules).get(build_id).cloned();
        let Some(module) = module else {
            return;
        };
        let path = Path::new(&module);
        if baton_symbolizer::build_id_of(path).as_deref() != Some(build_id) {
            tracing::info!(
                module,
                build_id,
                "the file on disk changed; not uploading it"
            );
            return;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) if b.len() <= MAX_UPLOAD => b,
            Ok(b) => {
                tracing::warn!(module, size = b.len(), "too large to upload");
                return;
            }
            Err(e) => {
                tracing::warn!(module, error = %e, "cannot read for upload");
                return;
            }
        };
        // Only what the symbolizer reads (symbols, DWARF, notes, headers), as
        // `objcopy --only-keep-debug` would keep; the whole file if it cannot be cut.
        let size = bytes.len();
        let bytes = match baton_symbolizer::debug_only(&bytes) {
            Ok(cut) => cut,
            Err(e) => {
                tracing::debug!(module, error = %e, "uploading the whole file");
                bytes
            }
        };
        let kept = bytes.len();
        // Compressed on the wire: DWARF shrinks about 3 to 4 times.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let bytes = match gz.write_all(&bytes).and_then(|()| gz.finish()) {
            Ok(z) => z,
            Err(_) => bytes,
        };
        tracing::debug!(
            module,
            size,
            kept,
            compressed = bytes.len(),
            "uploading debug info"
        );
        match client.put_bytes(&format!("/api/v1/debuginfo/{build_id}"), bytes) {
            Ok((code, _)) if (200..300).contains(&code) => {
                self.stats.debuginfo_uploads.fetch_add(1, Ordering::Relaxed);
                eprintln!("baton agent: uploaded debug info of {module} ({build_id})");
            }
            Ok((code, reply)) => {
                tracing::warn!(module, code, reply = %String::from_utf8_lossy(&reply), "debug info upload refused")
            }
            Err(e) => tracing::warn!(module, error = %e, "debug info upload failed"),
        }
    }
}

/// The largest file an agent uploads as debug info.
const MAX_UPLOAD: usize = 512 << 20;

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_model::{StackSample, ValueType};

    /// A batch of `rows` one-sample rows, one pid each.
    fn batch(rows: usize) -> Batch {
        let sample = |pid: usize| StackSample {
            labels: [("pid".to_string(), pid.to_string())].into(),
            value: 1,
            weight: 1.0,
            value_index: 0,
            stack: Vec::new(),
        };
        let mut b = Batch::new("cpu", vec![ValueType::new("cpu", "nanoseconds")], 1);
        b.samples = (0..rows).map(sample).collect();
        b
    }

    #[test]
    fn survives_a_restart_and_drops_the_oldest_when_full() {
        let dir = std::env::temp_dir().join(format!("baton-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let o = Outbox::open(&dir, 1 << 20, "h-1".into()).expect("open");
        o.push(&batch(3)).expect("push");
        o.push(&batch(4)).expect("push");
        drop(o);
        let o = Outbox::open(&dir, 1 << 20, "h-2".into()).expect("reopen");
        assert_eq!(o.pending().0, 2);
        let size = o.pending().1;
        // A limit under the three files' size drops the oldest one.
        let o = Outbox {
            max_bytes: size,
            ..o
        };
        o.push(&batch(5)).expect("push");
        // The oldest went first, the newest stayed, and every dropped row was counted.
        let st = o.lock();
        let ids: Vec<String> = st.files.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.last().map(String::as_str), Some("h-2.2"));
        assert!(!ids.contains(&"h-1.0".to_string()), "{ids:?}");
        assert!(st.bytes <= size);
        let kept: u64 = st.files.iter().map(|e| e.rows).sum();
        drop(st);
        let dropped = o.stats.dropped_rows.load(Ordering::Relaxed);
        assert_eq!(dropped + kept, 3 + 4 + 5);
        assert!(dropped >= 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
