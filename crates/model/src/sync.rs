//! Lock helpers: one place that decides what a poisoned lock means.
//!
//! A thread that panicked while holding one of Baton's locks leaves data that is still
//! consistent enough to read (every critical section is short and writes whole values), and
//! the agent must keep profiling rather than cascade the panic. So every lock is taken through
//! these helpers, which recover the guard from a poisoned lock instead of panicking.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Locks `m`, recovering the guard if a panicking thread poisoned it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, recovering the guard if a panicking thread poisoned it.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, recovering the guard if a panicking thread poisoned it.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `c` for a notification or `timeout`, whichever comes first, and gives the guard
/// back, recovering it if a panicking thread poisoned the lock meanwhile.
pub fn wait_timeout<'a, T>(
    c: &Condvar,
    g: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    c.wait_timeout(g, timeout)
        .unwrap_or_else(|p| p.into_inner())
        .0
}

/// Waits on `c` until `pending` is false or `timeout` passes, and gives the guard back,
/// recovering it from a poisoned lock.
pub fn wait_timeout_while<'a, T>(
    c: &Condvar,
    g: MutexGuard<'a, T>,
    timeout: Duration,
    pending: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    c.wait_timeout_while(g, timeout, pending)
        .unwrap_or_else(|p| p.into_inner())
        .0
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, RwLock};

    #[test]
    fn a_poisoned_lock_still_yields_its_value() {
        let m = Arc::new(Mutex::new(7));
        let l = Arc::new(RwLock::new(8));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *super::lock(&m) += 1;
        *super::write(&l) += 1;
        assert_eq!(*super::lock(&m), 8);
        assert_eq!(*super::read(&l), 9);
    }
}
