//! Exec events from BPF: every successful `execve` on the host, as (pid, executable), through a
//! ring buffer. Exec triggers use it so that a process living a millisecond is still seen.

use std::cell::RefCell;
use std::rc::Rc;

use libbpf_rs::{Link, RingBuffer, RingBufferBuilder};

use crate::mechanics::record::{decode, record};
use crate::mechanics::skel::open_load;
use crate::ProfilerError;

bpf_skel!("exec");
use skel::{ExecSkel, ExecSkelBuilder};

/// `struct exec_event` of exec.bpf.c: a process and the file it exec'd.
#[repr(C)]
#[derive(Clone, Copy)]
struct ExecEvent {
    pid: u32,
    pad: u32,
    filename: [u8; 256],
}
record!(ExecEvent, "exec_event", 264);

/// A running exec watcher. Dropping it detaches the program.
pub struct ExecEvents {
    // Declared first: dropped before the skeleton whose map it reads.
    ring: RingBuffer<'static>,
    seen: Rc<RefCell<Vec<(u32, String)>>>,
    _link: Link,
    skel: ExecSkel<'static>,
}

impl ExecEvents {
    /// Loads and attaches the `sched_process_exec` program.
    pub fn start() -> Result<ExecEvents, ProfilerError> {
        let skel = open_load("exec", None, ExecSkelBuilder::default(), |_| Ok(()))?;
        let link = skel
            .progs
            .on_exec
            .attach()
            .map_err(ProfilerError::bpf("attaching the exec tracepoint"))?;
        let seen: Rc<RefCell<Vec<(u32, String)>>> = Rc::default();
        let sink = seen.clone();
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.events, move |data: &[u8]| {
                if let Ok(e) = decode::<ExecEvent>(data) {
                    let name = &e.filename;
                    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                    let file = String::from_utf8_lossy(&name[..end]).into_owned();
                    sink.borrow_mut().push((e.pid, file));
                }
                0
            })
            .map_err(ProfilerError::bpf("adding the exec ring buffer"))?;
        let ring = builder
            .build()
            .map_err(ProfilerError::bpf("building the exec ring buffer"))?;
        Ok(ExecEvents {
            ring,
            seen,
            _link: link,
            skel,
        })
    }

    /// Every exec since the last call, as (pid, filename given to execve). Never blocks.
    pub fn take(&mut self) -> Vec<(u32, String)> {
        if let Err(e) = self.ring.consume() {
            tracing::warn!(error = %e, "reading exec events failed");
        }
        std::mem::take(&mut *self.seen.borrow_mut())
    }

    /// Events lost because the ring buffer was full.
    pub fn dropped(&self) -> u64 {
        crate::mechanics::maps::u64_value(&self.skel.maps.dropped, &0u32.to_ne_bytes()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_process_that_lives_a_millisecond() {
        if !crate::sys::has_profiling_privileges() {
            panic!("this test needs root (or CAP_BPF + CAP_PERFMON) to load BPF");
        }
        let mut ev = ExecEvents::start().expect("exec watcher starts");
        let status = std::process::Command::new("/bin/true")
            .status()
            .expect("run /bin/true");
        assert!(status.success());
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen.extend(ev.take());
            if seen.iter().any(|(_, f)| f == "/bin/true") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            seen.iter().any(|(_, f)| f == "/bin/true"),
            "no exec of /bin/true among {seen:?}"
        );
        assert_eq!(ev.dropped(), 0);
    }
}
