//! Reading another process's memory (`process_vm_readv`), for naming interpreter frames.

/// A process whose memory is read.
pub(crate) struct ProcMem {
    pid: u32,
}

impl ProcMem {
    pub fn new(pid: u32) -> ProcMem {
        ProcMem { pid }
    }

    /// Fills `buf` from `addr`; an error unless every byte was read.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which is writable for its length; `remote` is only
        // read by the kernel, from the other process.
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(format!(
                "reading {} bytes at {addr:#x} of pid {}: {}",
                buf.len(),
                self.pid,
                std::io::Error::last_os_error()
            ));
        }
        if n as usize != buf.len() {
            return Err(format!(
                "read {n} of {} bytes at {addr:#x} of pid {}",
                buf.len(),
                self.pid
            ));
        }
        Ok(())
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    pub fn read_u32(&self, addr: u64) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_memory_and_refuses_unmapped_addresses() {
        let value: u64 = 0x1234_5678_9abc_def0;
        let mem = ProcMem::new(std::process::id());
        assert_eq!(mem.read_u64(&value as *const u64 as u64), Ok(value));
        assert!(mem.read_u64(8).is_err());
    }
}
