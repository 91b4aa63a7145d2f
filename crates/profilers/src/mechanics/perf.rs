//! `perf_event_open` for sampling events: hardware cycles where the PMU allows, else cpu-clock.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The event that drives sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingEvent {
    /// Hardware CPU cycles (needs a PMU; most VMs have none).
    Cycles,
    /// The software `cpu-clock` timer, available everywhere.
    CpuClock,
}

impl SamplingEvent {
    pub fn name(self) -> &'static str {
        match self {
            SamplingEvent::Cycles => "cycles",
            SamplingEvent::CpuClock => "cpu-clock",
        }
    }

    fn type_and_config(self) -> (u32, u64) {
        const PERF_TYPE_HARDWARE: u32 = 0;
        const PERF_TYPE_SOFTWARE: u32 = 1;
        const PERF_COUNT_HW_CPU_CYCLES: u64 = 0;
        const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
        match self {
            SamplingEvent::Cycles => (PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES),
            SamplingEvent::CpuClock => (PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK),
        }
    }
}

/// `struct perf_event_attr`, as of PERF_ATTR_SIZE_VER8 (136 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_freq: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
    aux_sample_size: u32,
    reserved_3: u32,
    sig_data: u64,
    config3: u64,
}

const FLAG_FREQ: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// Opens a system-wide sampling event on `cpu` at `freq_hz`.
pub(crate) fn open_sampling_event(
    event: SamplingEvent,
    cpu: u32,
    freq_hz: u64,
) -> io::Result<OwnedFd> {
    let (type_, config) = event.type_and_config();
    let attr = PerfEventAttr {
        type_,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config,
        sample_freq: freq_hz,
        flags: FLAG_FREQ,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, fully initialised perf_event_attr of the size it declares; the
    // kernel only reads it. pid = -1 with a cpu means "every task on this CPU".
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn attr_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<super::PerfEventAttr>(), 136);
    }
}
