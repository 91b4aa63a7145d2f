//! One stack frame, keyed the way the central symbolizer will key it: build ID plus file offset.

use serde::{Deserialize, Serialize};

/// Where a frame's address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// A kernel text address, resolved on the host through kallsyms.
    Kernel,
    /// A native user frame: `address` is a file offset inside `module`.
    User,
    /// A JIT frame named from a perf map on the host.
    Jit,
    /// A function inlined into the frame that follows it (its caller), at the same code
    /// address: `module`, `build_id` and `address` are the caller's, `function`, `file` and
    /// `line` its own, resolved on the host from DWARF.
    Inlined,
    /// A function of interpreted code (a Python function), named on the host from the runtime's
    /// own objects: `module` is the runtime (`[python]`), `function`, `file` and `line` its
    /// own, `address` 0.
    Interpreted,
}

impl FrameKind {
    pub fn as_u8(self) -> u8 {
        match self {
            FrameKind::Kernel => 0,
            FrameKind::User => 1,
            FrameKind::Jit => 2,
            FrameKind::Inlined => 3,
            FrameKind::Interpreted => 4,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(FrameKind::Kernel),
            1 => Some(FrameKind::User),
            2 => Some(FrameKind::Jit),
            3 => Some(FrameKind::Inlined),
            4 => Some(FrameKind::Interpreted),
            _ => None,
        }
    }
}

/// Module name used for kernel frames.
pub const KERNEL_MODULE: &str = "[kernel.kallsyms]";

/// Module names of interpreted frames, one per runtime.
pub const INTERPRETED_MODULES: &[&str] = &["[python]"];

/// A resolved or unresolved frame. A frame with no symbol is kept, never dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub kind: FrameKind,
    /// Demangled function name, when one was found.
    pub function: Option<String>,
    /// Path of the module (ELF file) or `[kernel.kallsyms]`.
    pub module: String,
    /// Hex GNU build ID of the module, when it has one.
    pub build_id: Option<String>,
    /// File offset for user frames; the raw address for kernel and JIT frames.
    pub address: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl Frame {
    /// The name shown in flame graphs and tables: the function, or `[unknown] module+0xoffset`.
    pub fn display_name(&self) -> String {
        match &self.function {
            Some(f) => f.clone(),
            None => format!(
                "[unknown] {}+{:#x}",
                module_basename(&self.module),
                self.address
            ),
        }
    }
}

/// The last path component of a module, which is what people recognise (`libc.so.6`).
pub fn module_basename(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_frames_show_module_and_offset() {
        let f = Frame {
            kind: FrameKind::User,
            function: None,
            module: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
            build_id: None,
            address: 0x2a1f0,
            file: None,
            line: None,
        };
        assert_eq!(f.display_name(), "[unknown] libc.so.6+0x2a1f0");
    }
}
