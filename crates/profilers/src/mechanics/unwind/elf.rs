//! Reads what DWARF unwinding needs from an ELF file: `.eh_frame` and `.eh_frame_hdr` with their
//! addresses, the load segments, the build ID, and whether the code keeps frame pointers.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use gimli::{
    BaseAddresses, CallFrameInstruction, CieOrFde, EhFrame, NativeEndian, UnwindSection, X86_64,
};
use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSegment};

/// A section's stated address range and its bytes, shared by every process that maps it.
#[derive(Debug, Clone)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: Arc<[u8]>,
}

/// The unwind information of one ELF module, cached per build ID.
#[derive(Debug)]
pub struct ModuleUnwind {
    pub build_id: Option<String>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
    /// The entry point (`e_entry`); 0 for most shared objects.
    pub entry: u64,
    /// Executable `PT_LOAD` segments: (file offset, stated address, file size). Only executable
    /// ones, because neighbouring segments share a page and only code mappings are unwound.
    pub loads: Vec<(u64, u64, u64)>,
    /// Whether most functions set up a frame pointer, judged from their CFI.
    /// See [`FRAME_POINTER_SHARE`].
    pub frame_pointers: bool,
    /// FDEs seen, and how many of them make `rbp` the CFA register.
    pub fdes: usize,
    pub fdes_with_rbp: usize,
}

/// A module counts as built with frame pointers when at least this share of its functions
/// (FDEs in `.text`, leaving out PLT stubs and the entry point `_start`) switch the CFA to `rbp`.
/// Built with `-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer`, every function does.
/// Without frame pointers only the few that need one (`alloca`, variable-length arrays) do: 3%
/// of Debian's libc and gzip, 7% of a Rust release binary. In between are mixed modules, and a
/// frame-pointer walk through any function without one loses frames: gcc's
/// `-fno-omit-frame-pointer` alone leaves leaf functions without (a walk from a leaf skips its
/// caller), and a Rust binary links a standard library built with frame pointers into code built
/// without (74% of a small one). Those are unwound with DWARF: being right beats being cheap.
const FRAME_POINTER_SHARE: f64 = 0.9;

impl ModuleUnwind {
    /// Bytes of unwind data held for this module.
    pub fn bytes(&self) -> usize {
        self.eh_frame.as_ref().map_or(0, |s| s.data.len())
            + self.eh_frame_hdr.as_ref().map_or(0, |s| s.data.len())
    }

    /// The stated address of the byte at `file_offset`, from the load segment holding it.
    pub fn svma_of_offset(&self, file_offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|(off, _, size)| {
                file_offset >= (off & !0xfff) && file_offset < off.saturating_add(*size)
            })
            .map(|(off, vaddr, _)| vaddr.wrapping_add(file_offset).wrapping_sub(*off))
    }

    /// Reads a module from a file. Only headers and the unwind sections are read.
    pub fn read(path: &Path) -> Result<ModuleUnwind, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cache = ReadCache::new(file);
        let obj = object::File::parse(&cache).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::from_object(&obj))
    }

    /// Reads a module from its bytes (the vDSO, tests).
    pub fn parse(data: &[u8]) -> Result<ModuleUnwind, String> {
        let obj = object::File::parse(data).map_err(|e| e.to_string())?;
        Ok(Self::from_object(&obj))
    }

    fn from_object<'d, O: Object<'d>>(obj: &O) -> ModuleUnwind {
        let section = |name: &str| -> Option<Section> {
            let s = obj.section_by_name(name)?;
            let data = s.uncompressed_data().ok()?;
            Some(Section {
                svma: s.address()..s.address() + s.size(),
                data: Arc::from(&*data),
            })
        };
        let range = |name: &str| {
            obj.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        let build_id = obj
            .build_id()
            .ok()
            .flatten()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect());
        let loads = obj
            .segments()
            .filter(|seg| match seg.flags() {
                object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => true,
            })
            .map(|seg| {
                let (off, size) = seg.file_range();
                (off, seg.address(), size)
            })
            .collect();
        let mut m = ModuleUnwind {
            build_id,
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            text_svma: range(".text"),
            got_svma: range(".got"),
            entry: obj.entry(),
            loads,
            frame_pointers: true,
            fdes: 0,
            fdes_with_rbp: 0,
        };
        m.classify();
        m
    }

    /// Counts the FDEs that make `rbp` the CFA register, and judges frame pointers from it. A
    /// module without CFI counts as having frame pointers: there is nothing better to use.
    fn classify(&mut self) {
        let Some(eh) = &self.eh_frame else {
            return;
        };
        let section = EhFrame::new(&eh.data, NativeEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(eh.svma.start);
        if let Some(t) = &self.text_svma {
            bases = bases.set_text(t.start);
        }
        if let Some(g) = &self.got_svma {
            bases = bases.set_got(g.start);
        }
        let mut entries = section.entries(&bases);
        let (mut fdes, mut with_rbp) = (0usize, 0usize);
        while let Ok(Some(entry)) = entries.next() {
            let CieOrFde::Fde(partial) = entry else {
                continue;
            };
            let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
                continue;
            };
            if let Some(t) = &self.text_svma {
                if !t.contains(&fde.initial_address()) {
                    continue;
                }
            }
            let start = fde.initial_address();
            if self.entry != 0 && (start..start + fde.len()).contains(&self.entry) {
                continue;
            }
            fdes += 1;
            let mut ins = fde.instructions(&section, &bases);
            while let Ok(Some(i)) = ins.next() {
                let uses_rbp = match i {
                    CallFrameInstruction::DefCfa { register, .. }
                    | CallFrameInstruction::DefCfaSf { register, .. }
                    | CallFrameInstruction::DefCfaRegister { register } => register == X86_64::RBP,
                    _ => false,
                };
                if uses_rbp {
                    with_rbp += 1;
                    break;
                }
            }
        }
        self.fdes = fdes;
        self.fdes_with_rbp = with_rbp;
        self.frame_pointers = fdes == 0 || with_rbp as f64 >= FRAME_POINTER_SHARE * fdes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_libc_has_cfi_and_no_frame_pointers() {
        let Some(libc) = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists()) else {
            panic!("libc.so.6 not found in the Debian paths");
        };
        let m = ModuleUnwind::read(libc).expect("libc parses");
        assert!(m.eh_frame.is_some() && m.eh_frame_hdr.is_some());
        assert!(m.fdes > 1000, "fdes {}", m.fdes);
        assert!(
            !m.frame_pointers,
            "{} of {} FDEs use rbp",
            m.fdes_with_rbp, m.fdes
        );
        assert!(m.build_id.as_deref().is_some_and(|b| b.len() >= 40));
        // The code mapping starts at the page of the executable segment's first byte.
        let &(off, vaddr, _) = m.loads.first().expect("an executable segment");
        assert_eq!(m.svma_of_offset(off & !0xfff), Some(vaddr - (off & 0xfff)));
    }

    #[test]
    fn svma_of_offset_follows_the_segment() {
        let m = ModuleUnwind {
            build_id: None,
            eh_frame: None,
            eh_frame_hdr: None,
            text_svma: None,
            got_svma: None,
            entry: 0,
            loads: vec![(0, 0, 0x1000), (0x1234, 0x2234, 0x5000)],
            frame_pointers: true,
            fdes: 0,
            fdes_with_rbp: 0,
        };
        // The mapping starts at the page holding the segment's first byte.
        assert_eq!(m.svma_of_offset(0x1000), Some(0x2000));
        assert_eq!(m.svma_of_offset(0x3000), Some(0x4000));
        assert_eq!(m.svma_of_offset(0x9000), None);
    }
}
