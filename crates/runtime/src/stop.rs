//! The process-wide stop flag: SIGINT and SIGTERM set it, and every loop of the runtime polls
//! it, so a stop keeps what was gathered and detaches BPF cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for (by a signal or [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks every loop to stop, as SIGTERM would.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT/SIGTERM end the run, keeping what was gathered.
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Sleeps for `d`, waking early when a stop is asked for.
pub fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop_requested() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resolves once a stop is asked for (the HTTP servers' graceful shutdown).
pub async fn until_stopped() {
    while !stop_requested() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
