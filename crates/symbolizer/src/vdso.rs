//! The vDSO: the same image is mapped into every process of a kernel, so this process's own copy
//! names the vDSO frames of all of them.

use std::path::PathBuf;

/// This process's vDSO image, read from its own memory.
pub fn own_vdso_image() -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let text = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = text.lines().find(|l| l.ends_with("[vdso]"))?;
    let (range, _) = line.split_once(' ')?;
    let (s, e) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(s, 16).ok()?,
        u64::from_str_radix(e, 16).ok()?,
    );
    let mut buf = vec![0u8; usize::try_from(end.checked_sub(start)?).ok()?];
    let mem = std::fs::File::open("/proc/self/mem").ok()?;
    mem.read_exact_at(&mut buf, start).ok()?;
    Some(buf)
}

/// The vDSO image written to a private temporary file on first use (blazesym reads ELF files),
/// removed on drop.
#[derive(Default)]
pub(crate) struct VdsoFile {
    state: Option<Option<PathBuf>>,
}

impl VdsoFile {
    pub(crate) fn path(&mut self) -> Option<PathBuf> {
        self.state
            .get_or_insert_with(|| {
                let image = own_vdso_image()?;
                let path =
                    std::env::temp_dir().join(format!("baton-vdso-{}.so", std::process::id()));
                std::fs::write(&path, image)
                    .map_err(|e| tracing::debug!(error = %e, "cannot write the vDSO image"))
                    .ok()?;
                Some(path)
            })
            .clone()
    }
}

impl Drop for VdsoFile {
    fn drop(&mut self) {
        if let Some(Some(p)) = &self.state {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vdso_image_is_an_elf_file() {
        let img = own_vdso_image().expect("a vDSO is mapped");
        assert_eq!(&img[..4], b"\x7fELF");
        let mut f = VdsoFile::default();
        let p = f.path().expect("written");
        assert!(p.exists());
        drop(f);
        assert!(!p.exists(), "the temporary image is removed on drop");
    }
}
