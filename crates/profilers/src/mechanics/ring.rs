//! A thread that empties a BPF ring buffer every 20 ms into a callback, with a flush handshake
//! so a drain sees every event submitted before it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_model::sync::lock;
use libbpf_rs::{MapCore, RingBufferBuilder};

use crate::mechanics::record::{decode, Record};
use crate::ProfilerError;

#[derive(Default)]
struct Flags {
    stop: AtomicBool,
    asked: AtomicU64,
    done: AtomicU64,
}

/// Reads one ring on its own thread until dropped.
pub(crate) struct RingReader {
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

impl RingReader {
    /// Starts reading `map` (a `BPF_MAP_TYPE_RINGBUF`); `on_event` gets every record. BPF may
    /// submit without wakeups: the thread reads every 20 ms whatever happens.
    pub(crate) fn start(
        name: &str,
        map: &dyn MapCore,
        mut on_event: impl FnMut(&[u8]) + Send + 'static,
    ) -> Result<RingReader, ProfilerError> {
        let mut builder = RingBufferBuilder::new();
        builder
            .add(map, move |data: &[u8]| {
                on_event(data);
                0
            })
            .map_err(ProfilerError::bpf("reading a ring buffer"))?;
        let ring = builder
            .build()
            .map_err(ProfilerError::bpf("reading a ring buffer"))?;
        let flags = Arc::new(Flags::default());
        let f = Arc::clone(&flags);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !f.stop.load(Ordering::Relaxed) {
                    let asked = f.asked.load(Ordering::SeqCst);
                    let _ = ring.poll(Duration::from_millis(20));
                    let _ = ring.consume();
                    f.done.store(asked, Ordering::SeqCst);
                }
            })
            .map_err(|e| ProfilerError::Thread(e.to_string()))?;
        Ok(RingReader {
            flags,
            thread: Some(thread),
        })
    }

    /// Returns once the thread has read the ring through at least once after this call began,
    /// so every event submitted before it has reached the callback (or after 1 s).
    pub(crate) fn flush(&self) {
        self.flush_within(Duration::from_secs(1));
    }

    /// [`RingReader::flush`], waiting at most `limit`.
    pub(crate) fn flush_within(&self, limit: Duration) {
        let asked = self.flags.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let t0 = Instant::now();
        while self.flags.done.load(Ordering::SeqCst) < asked && t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes for a ring that should hold `want` bytes when `on`, as the kernel takes them (a power
/// of two), between `min` and `max`; the smallest ring (a page) when off.
pub(crate) fn ring_bytes(on: bool, want: u64, min: u64, max: u64) -> u32 {
    if on {
        want.next_power_of_two().clamp(min, max) as u32
    } else {
        4096
    }
}

/// A ring of fixed records `T`, decoded and kept until taken.
pub(crate) struct RingCollector<T: Record + Send> {
    reader: RingReader,
    got: Arc<Mutex<Vec<T>>>,
}

impl<T: Record + Send> RingCollector<T> {
    /// Starts reading `map` on a thread named `name`; records of the wrong size are dropped
    /// (and counted).
    pub(crate) fn start(name: &str, map: &dyn MapCore) -> Result<Self, ProfilerError> {
        let got: Arc<Mutex<Vec<T>>> = Arc::default();
        let sink = Arc::clone(&got);
        let reader = RingReader::start(name, map, move |d| {
            if let Ok(r) = decode::<T>(d) {
                lock(&sink).push(r);
            }
        })?;
        Ok(RingCollector { reader, got })
    }

    /// Every record submitted before this call and not taken yet.
    pub(crate) fn take(&self) -> Vec<T> {
        self.reader.flush();
        std::mem::take(&mut *lock(&self.got))
    }
}
