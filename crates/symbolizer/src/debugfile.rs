//! Cuts an ELF binary down to what a symbolizer reads: symbols, DWARF, notes and headers.
//!
//! This is what an agent uploads to the server's debug-info store, in the manner of
//! `objcopy --only-keep-debug`. The result keeps every section header in its place (symbols
//! refer to sections by index) and every program header unchanged, so file offsets still map to
//! virtual addresses exactly. Sections the symbolizer never reads (code, read-only data, data,
//! relocations, unwind tables) keep their headers as `SHT_NOBITS` with no bytes in the file.

use object::elf::{FileHeader64, SectionHeader64, SHF_ALLOC, SHT_DYNSYM, SHT_NOBITS, SHT_NOTE};
use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, U32, U64};

/// The debug-only image of `data`, an ELF64 file. Errors name what is wrong with the input.
pub fn debug_only(data: &[u8]) -> Result<Vec<u8>, String> {
    let header = FileHeader64::<Endianness>::parse(data).map_err(|e| format!("not ELF64: {e}"))?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let sections = header
        .section_headers(endian, data)
        .map_err(|e| format!("bad section headers: {e}"))?;
    if sections.is_empty() {
        return Err("the file has no section headers".into());
    }
    // The ELF header and program headers are copied as they are, from the start of the file.
    let phoff = header.e_phoff.get(endian);
    // Checked: a hostile header's offset plus table size can overflow (a fuzzer found one).
    let ph_end = if header.e_phnum.get(endian) == 0 {
        Some(u64::from(header.e_ehsize.get(endian)))
    } else {
        u64::from(header.e_phnum.get(endian))
            .checked_mul(u64::from(header.e_phentsize.get(endian)))
            .and_then(|n| phoff.checked_add(n))
    };
    let ph_end = match ph_end {
        Some(e) if e <= 1 << 16 && e as usize <= data.len() => e,
        _ => return Err("program headers are not near the start of the file".into()),
    };
    // A dynamic symbol table's string table is kept with it.
    let mut keep: Vec<bool> = sections.iter().map(|s| wanted(s, endian)).collect();
    for s in sections {
        if s.sh_type(endian) == SHT_DYNSYM {
            if let Some(k) = keep.get_mut(s.sh_link(endian) as usize) {
                *k = true;
            }
        }
    }
    let mut out = data[..ph_end as usize].to_vec();
    let mut headers: Vec<SectionHeader64<Endianness>> = Vec::with_capacity(sections.len());
    for (s, &kept) in sections.iter().zip(&keep) {
        let mut h = *s;
        if kept && s.sh_type(endian) != SHT_NOBITS {
            let bytes = s
                .data(endian, data)
                .map_err(|e| format!("section data out of bounds: {e}"))?;
            let align = s.sh_addralign(endian).clamp(1, 4096) as usize;
            out.resize(out.len().next_multiple_of(align), 0);
            h.sh_offset = U64::new(endian, out.len() as u64);
            out.extend_from_slice(bytes);
        } else if s.sh_type(endian) != object::elf::SHT_NULL {
            h.sh_type = U32::new(endian, SHT_NOBITS);
            h.sh_offset = U64::new(endian, out.len() as u64);
        }
        headers.push(h);
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let shoff = out.len() as u64;
    for h in &headers {
        out.extend_from_slice(object::pod::bytes_of(h));
    }
    // Point the ELF header at the new section header table.
    let mut new_header = *header;
    new_header.e_shoff = U64::new(endian, shoff);
    let head = object::pod::bytes_of(&new_header);
    out[..head.len()].copy_from_slice(head);
    Ok(out)
}

/// Whether a section's bytes are kept: everything not loaded at run time (symbol and string
/// tables, DWARF, `.comment`, `.gnu_debuglink`), notes (the build ID), and the dynamic symbols.
fn wanted(s: &SectionHeader64<Endianness>, endian: Endianness) -> bool {
    let ty = s.sh_type(endian);
    if ty == SHT_NOTE || ty == SHT_DYNSYM {
        return true;
    }
    s.sh_flags(endian) & u64::from(SHF_ALLOC) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_id_of, ElfSymbolizer};

    /// Inputs the fuzzer (bench/fuzz.sh) crashed on, kept in fuzz/regressions/elf_cutter: each
    /// is now refused with an error.
    #[test]
    fn inputs_a_fuzzer_found_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/elf_cutter");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("fuzz/regressions/elf_cutter") {
            let path = e.expect("entry").path();
            let data = std::fs::read(&path).expect("read");
            let r = debug_only(&data);
            assert!(
                r.is_err(),
                "{} was cut: {} bytes",
                path.display(),
                r.map_or(0, |v| v.len())
            );
            n += 1;
        }
        assert!(n > 0, "no regression inputs in {}", dir.display());
    }

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn keeps_the_build_id_and_resolves_as_the_whole_binary_does() {
        let exe = std::env::current_exe().expect("exe");
        let whole = std::fs::read(&exe).expect("read");
        let cut = debug_only(&whole).expect("cut");
        assert!(
            cut.len() < whole.len(),
            "{} bytes from {}",
            cut.len(),
            whole.len()
        );
        let dir = std::env::temp_dir().join(format!("baton-debugfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cut.debug");
        std::fs::write(&path, &cut).expect("write");
        assert_eq!(build_id_of(&path), build_id_of(&exe));
        // The function's file offset, from this process's own mapping of the binary.
        let addr = a_function_to_find as *const () as u64;
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let canon = std::fs::canonicalize(&exe).expect("canon");
        let offset = crate::parse_maps(&maps)
            .into_iter()
            .find(|m| addr >= m.start && addr < m.end && m.path == canon.to_string_lossy())
            .map(|m| addr - m.start + m.file_offset)
            .expect("mapping of the function");
        let s = ElfSymbolizer::default();
        let from_whole = s.file_offsets(&exe, &[offset]);
        let from_cut = s.file_offsets(&path, &[offset]);
        let name = from_cut[0].as_ref().map(|i| i.function.as_str());
        assert_eq!(
            name,
            Some("baton_symbolizer::debugfile::tests::a_function_to_find")
        );
        assert_eq!(from_whole, from_cut);
        assert!(from_cut[0].as_ref().is_some_and(|i| i.line.is_some()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_what_is_not_elf() {
        assert!(debug_only(b"#!/bin/sh\necho hi\n").is_err());
    }
}
