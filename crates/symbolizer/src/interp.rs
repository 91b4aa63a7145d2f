//! Frames of interpreted code (Python functions), named on the host by the profiler that walked
//! them, carried through a stack of native addresses as synthetic addresses.
//!
//! An unwinder that merges interpreter frames into a native stack interns each frame's
//! (language, function, file, line) here and puts the address it gets back in the stack; the
//! symbolizer turns the address back into a [`FrameKind::Interpreted`] frame. Synthetic
//! addresses are odd and start at [`BASE`], a non-canonical x86-64 address that no code can have;
//! the symbolizer's one-byte-back lookup of return addresses lands on the even address below,
//! which names the same frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use baton_model::{Frame, FrameKind};

/// Where synthetic addresses start.
pub const BASE: u64 = 0x4000_0000_0000_0000;
/// At most this many distinct frames are interned; later ones share one "[too many]" frame.
const MAX_FRAMES: usize = 4 << 20;

/// One interpreted frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterpFrame {
    /// The runtime, as the frame's module shows it: `[python]`.
    pub module: &'static str,
    pub function: String,
    pub file: String,
    pub line: u32,
}

#[derive(Default)]
struct Table {
    frames: Vec<Arc<InterpFrame>>,
    ids: HashMap<Arc<InterpFrame>, u64>,
}

fn table() -> &'static Mutex<Table> {
    static T: OnceLock<Mutex<Table>> = OnceLock::new();
    T.get_or_init(Mutex::default)
}

/// The synthetic address of a frame.
pub fn intern(frame: InterpFrame) -> u64 {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(id) = t.ids.get(&frame) {
        return BASE + (id << 1) + 1;
    }
    let frame = if t.frames.len() >= MAX_FRAMES {
        Arc::new(InterpFrame {
            module: frame.module,
            function: "[too many interpreted frames]".into(),
            file: String::new(),
            line: 0,
        })
    } else {
        Arc::new(frame)
    };
    if let Some(id) = t.ids.get(&frame) {
        return BASE + (id << 1) + 1;
    }
    let id = t.frames.len() as u64;
    t.frames.push(frame.clone());
    t.ids.insert(frame, id);
    BASE + (id << 1) + 1
}

/// Whether `addr` (or the byte before it) is a synthetic address.
pub fn is_synthetic(addr: u64) -> bool {
    addr >= BASE && addr < BASE + ((MAX_FRAMES as u64 + 1) << 1) + 2
}

/// The frame of a synthetic address, as stored.
pub fn frame(addr: u64) -> Option<Frame> {
    if !is_synthetic(addr) {
        return None;
    }
    let id = (addr - BASE) >> 1;
    let t = table().lock().unwrap_or_else(|e| e.into_inner());
    let f = t.frames.get(id as usize)?;
    Some(Frame {
        kind: FrameKind::Interpreted,
        function: Some(f.function.clone()),
        module: f.module.to_string(),
        build_id: None,
        address: 0,
        file: (!f.file.is_empty()).then(|| f.file.clone()),
        line: (f.line > 0).then_some(f.line),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_interned_once_and_named_from_its_address_or_the_byte_before() {
        let f = InterpFrame {
            module: "[python]",
            function: "Mod.leaf_c".into(),
            file: "/tmp/hot.py".into(),
            line: 12,
        };
        let a = intern(f.clone());
        assert_eq!(intern(f), a);
        assert!(is_synthetic(a) && is_synthetic(a - 1));
        let named = frame(a).expect("frame");
        assert_eq!(frame(a - 1), Some(named.clone()));
        assert_eq!(named.kind, FrameKind::Interpreted);
        assert_eq!(named.function.as_deref(), Some("Mod.leaf_c"));
        assert_eq!(named.line, Some(12));
        assert!(frame(0x7fff_0000_1000).is_none());
    }
}
