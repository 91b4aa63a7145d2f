//! Exec events from BPF: every successful `execve` on the host, as (pid, executable), through a
//! ring buffer. Exec triggers use it so that a process living a millisecond is still seen.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::rc::Rc;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};

use crate::sys;
use crate::ProfilerError;

bpf_skel!("exec");
use skel::{ExecSkel, ExecSkelBuilder};

/// Size of the filename field of an event, as in `exec.bpf.c`.
const FILENAME_LEN: usize = 256;

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
        if !sys::has_profiling_privileges() {
            return Err(ProfilerError::Permission);
        }
        // As for the CPU profiler, the skeleton's object storage lives as long as the process.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = ExecSkelBuilder::default()
            .open(storage)
            .map_err(ProfilerError::bpf("opening the exec skeleton"))?;
        let skel = open
            .load()
            .map_err(ProfilerError::bpf("loading the exec program"))?;
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
                if data.len() >= 8 + FILENAME_LEN {
                    let pid = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                    let name = &data[8..8 + FILENAME_LEN];
                    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                    let file = String::from_utf8_lossy(&name[..end]).into_owned();
                    sink.borrow_mut().push((pid, file));
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
        self.skel
            .maps
            .dropped
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|v| {
                v.get(..8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_process_that_lives_a_millisecond() {
        if !sys::has_profiling_privileges() {
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
