//! How every BPF program starts: one target check, and one way to open, configure and load a
//! skeleton, with the same errors everywhere.
//!
//! [`open_load`] is the function; [`open_targeted!`] wraps it for programs built on `base.h`
//! (target filter, fork following), and [`open_copying!`] for those that also include
//! `copy.h` (stack copies for DWARF unwinding).

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use crate::{sys, ProfilerError};

/// What every profiler checks before it loads anything: the privileges, and that each target
/// process exists.
pub(crate) fn check_target(targets: Option<&[u32]>) -> Result<(), ProfilerError> {
    if !sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission);
    }
    match targets
        .unwrap_or_default()
        .iter()
        .find(|&&p| !sys::process_alive(p))
    {
        Some(&p) => Err(ProfilerError::NoSuchProcess(p)),
        None => Ok(()),
    }
}

/// Checks the targets, opens the skeleton `builder` makes (named `name` in errors), lets
/// `configure` set its variables and maps, and loads it.
pub(crate) fn open_load<B>(
    name: &'static str,
    targets: Option<&[u32]>,
    builder: B,
    configure: impl FnOnce(&mut B::Output) -> Result<(), ProfilerError>,
) -> Result<<B::Output as OpenSkel<'static>>::Output, ProfilerError>
where
    B: SkelBuilder<'static>,
{
    check_target(targets)?;
    // The skeleton borrows its object storage for its whole life; a profiler lives about as
    // long as the process, so the few hundred bytes are leaked on purpose.
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = builder
        .open(storage)
        .map_err(ProfilerError::load(name, "opening"))?;
    configure(&mut open)?;
    open.load().map_err(ProfilerError::load(name, "loading"))
}

/// The copy ring of a `copy.h` program with DWARF unwinding on. A copy takes only the stack it
/// holds (a few hundred bytes under a shallow main thread, about 4.5 KiB under a glibc thread,
/// at most 32 KiB), and BPF wakes the reader once the ring is half full. Measured with bursts
/// of exact-mode allocations under 20 KiB of stack: 1,000 fit in 8 MiB or 16 MiB alike; of
/// 10,000, 8 MiB kept 90-95% of the copies and 16 MiB 99%.
const COPY_RING_BYTES: u32 = 16 << 20;

/// Sizes a `copy.h` program's copy ring and the slots copies are built in (one per possible
/// CPU); both are kept at their smallest when nothing is ever copied.
pub(crate) fn size_copy_ring(
    copies: &mut libbpf_rs::OpenMapMut<'_>,
    slots: &mut libbpf_rs::OpenMapMut<'_>,
    dwarf: bool,
) -> Result<(), ProfilerError> {
    let sized = (|| {
        if !dwarf {
            copies.set_max_entries(4096)?;
            return slots.set_max_entries(1);
        }
        copies.set_max_entries(COPY_RING_BYTES)?;
        slots.set_max_entries(libbpf_rs::num_possible_cpus()? as u32)
    })();
    sized.map_err(ProfilerError::bpf("sizing the copy ring"))
}

/// Opens and loads a program built on `base.h` through [`open_load`]: `$o` (any options with
/// `targets` and `follow_forks`) sets its target filter, and its fork tracepoint is loaded and
/// attached only when children are followed. An optional `|open| { … }` sets the program's own
/// variables and maps. Evaluates to `(skeleton, Option<fork link>)`.
macro_rules! open_targeted {
    ($builder:ident, $name:literal, $o:expr) => {
        crate::mechanics::skel::open_targeted!($builder, $name, $o, |_open| {})
    };
    ($builder:ident, $name:literal, $o:expr, |$open:ident| $extra:block) => {{
        let targets: Option<&[u32]> = $o.targets.as_deref();
        let follow = targets.is_some() && $o.follow_forks;
        let skel =
            crate::mechanics::skel::open_load($name, targets, $builder::default(), |$open| {
                if let Some(ro) = $open.maps.rodata_data.as_deref_mut() {
                    ro.filter_targets = u8::from(targets.is_some());
                    ro.follow_forks = u8::from(follow);
                }
                if !follow {
                    $open.progs.on_fork.set_autoload(false);
                }
                $extra
                Ok(())
            })?;
        let fork = if follow {
            Some(
                skel.progs
                    .on_fork
                    .attach()
                    .map_err(crate::ProfilerError::bpf("attaching the fork tracepoint"))?,
            )
        } else {
            None
        };
        (skel, fork)
    }};
}
pub(crate) use open_targeted;

/// [`open_targeted!`] for a program that also includes `copy.h`: `$o.dwarf` turns its stack
/// copies on, and without them its copy ring is kept at its smallest.
macro_rules! open_copying {
    ($builder:ident, $name:literal, $o:expr) => {
        crate::mechanics::skel::open_copying!($builder, $name, $o, |_open| {})
    };
    ($builder:ident, $name:literal, $o:expr, |$open:ident| $extra:block) => {
        crate::mechanics::skel::open_targeted!($builder, $name, $o, |$open| {
            if let Some(ro) = $open.maps.rodata_data.as_deref_mut() {
                ro.dwarf = u8::from($o.dwarf);
            }
            crate::mechanics::skel::size_copy_ring(
                &mut $open.maps.copies,
                &mut $open.maps.copy_slots,
                $o.dwarf,
            )?;
            $extra
        })
    };
}
pub(crate) use open_copying;
