//! CPython: finding the interpreter in a process, its layout, and naming its frames.
//!
//! Detection needs no debug info: `_PyRuntime` is exported in `.dynsym` by every CPython 3
//! build (Debian's static, non-PIE `python3.11` included), the minor version comes from
//! `Py_Version` (3.11+) or the library's file name, and 3.13 publishes its own offsets in
//! `_PyRuntime.debug_offsets`, which are read rather than taken from the table. The thread
//! state of a sampled thread is found without decoding machine code: BPF walks the
//! interpreter's thread list for the one whose `thread_id` (`pthread_self()`, the thread
//! pointer on x86-64) is the task's `fsbase`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use baton_model::sync::lock;
use baton_symbolizer::{parse_maps, MapEntry};

use super::mem::ProcMem;
use super::python_layouts::LAYOUTS;

/// The offsets the unwinder reads, for one CPython minor version (all in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PyLayout {
    pub version: (u8, u8),
    pub runtime_interpreters_head: usize,
    pub interp_threads_head: usize,
    pub tstate_next: usize,
    pub tstate_thread_id: usize,
    /// `frame` (3.8–3.10), `cframe` (3.11, 3.12) or `current_frame` (3.13).
    pub tstate_frame: usize,
    /// `_PyCFrame.current_frame` (3.11, 3.12).
    pub cframe_current_frame: usize,
    /// `f_code` or `f_executable`.
    pub frame_code: usize,
    /// `f_lasti` (3.8–3.10), `prev_instr` (3.11, 3.12) or `instr_ptr` (3.13).
    pub frame_instr: usize,
    /// `f_back` or `previous`.
    pub frame_previous: usize,
    pub frame_owner: usize,
    /// 3.11's `is_entry`.
    pub frame_is_entry: usize,
    pub code_adaptive: usize,
    pub code_qualname: usize,
    pub code_filename: usize,
    pub code_name: usize,
    pub code_firstlineno: usize,
    /// `co_linetable` (3.10+) or `co_lnotab`.
    pub code_linetable: usize,
    pub object_type: usize,
    pub bytes_size: usize,
    pub bytes_data: usize,
    pub unicode_length: usize,
    pub unicode_state: usize,
    pub unicode_ascii_data: usize,
    pub unicode_compact_data: usize,
}

/// How frames of a version are chained, which decides how BPF walks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// 3.8–3.10: `PyFrameObject`s, one evaluation-loop call each.
    FrameObjects = 1,
    /// 3.11: `_PyInterpreterFrame`s behind `cframe`; the first of each loop call is `is_entry`.
    Entry311 = 2,
    /// 3.12: behind `cframe`; each loop call starts with a frame owned by the C stack.
    Shim312 = 3,
    /// 3.13+: `current_frame` on the thread state; shims as in 3.12.
    Shim313 = 4,
}

impl PyLayout {
    pub fn family(&self) -> Family {
        match self.version {
            (3, m) if m <= 10 => Family::FrameObjects,
            (3, 11) => Family::Entry311,
            (3, 12) => Family::Shim312,
            _ => Family::Shim313,
        }
    }
}

/// The table's layout of a minor version.
pub(crate) fn layout_of(version: (u8, u8)) -> Option<PyLayout> {
    LAYOUTS.iter().find(|l| l.version == version).copied()
}

/// A CPython found in a process.
#[derive(Debug, Clone)]
pub(crate) struct PythonProc {
    pub layout: PyLayout,
    /// Where `_PyRuntime` is in the process.
    pub runtime: u64,
    /// Where `_PyEval_EvalFrameDefault`'s code is, `[start, end)`.
    pub eval: (u64, u64),
    /// The object that holds the interpreter (the executable or libpython).
    pub object: String,
    /// Whether the layout was read from the process's own `_Py_DebugOffsets`.
    pub from_runtime: bool,
    /// Where `PyCode_Type` is: a frame's code object must be of that type to be named.
    pub code_type: Option<u64>,
}

/// What a look at a process found.
#[derive(Debug, Clone)]
pub(crate) enum Detection {
    Python(Box<PythonProc>),
    /// A Python it cannot unwind, and why (its stacks stay native).
    Unsupported(String),
    NotPython,
}

/// The minor version a file name says: `libpython3.11.so.1.0`, `python3.11`, `libpython2.7.so`.
fn version_from_name(name: &str) -> Option<(u8, u8)> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let mut it = rest.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Symbols of one ELF file that detection needs.
struct PySymbols {
    runtime: Option<u64>,
    version: Option<u64>,
    code_type: Option<u64>,
    eval: Option<(u64, u64)>,
    /// Loadable segments: (address, file offset, file size), to relocate by.
    segments: Vec<(u64, u64, u64)>,
}

impl PySymbols {
    /// The address the file gives the byte at `offset`.
    fn svma_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(_, off, size)| offset >= *off && offset < off + size)
            .map(|(addr, off, _)| addr + (offset - off))
    }
}

fn py_symbols(path: &Path) -> Option<PySymbols> {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let mut s = PySymbols {
        runtime: None,
        version: None,
        code_type: None,
        eval: None,
        segments: file
            .segments()
            .map(|seg| {
                let (off, size) = seg.file_range();
                (seg.address(), off, size)
            })
            .collect(),
    };
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        match sym.name() {
            Ok("_PyRuntime") => s.runtime = s.runtime.or(Some(sym.address())),
            Ok("Py_Version") => s.version = s.version.or(Some(sym.address())),
            Ok("PyCode_Type") => s.code_type = s.code_type.or(Some(sym.address())),
            Ok("_PyEval_EvalFrameDefault") if s.eval.is_none() => {
                s.eval = Some((sym.address(), sym.address() + sym.size().max(1)))
            }
            _ => {}
        }
    }
    Some(s)
}

/// [`py_symbols`] of a mapped file, read once per file (an interpreter's mappings change with
/// every extension module it loads, and each change is looked at again).
fn cached_symbols(pid: u32, e: &MapEntry) -> Option<Arc<PySymbols>> {
    type Cache = Mutex<HashMap<(u64, u64, String), Option<Arc<PySymbols>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (e.dev, e.inode, e.path.clone());
    if let Some(s) = lock(cache).get(&key) {
        return s.clone();
    }
    let root = format!("/proc/{pid}/root{}", e.path);
    let syms = py_symbols(Path::new(&root)).map(Arc::new);
    lock(cache).insert(key, syms.clone());
    syms
}

/// Looks for a CPython in process `pid`, whose `/proc/PID/maps` text is `maps`.
pub(crate) fn detect(pid: u32, maps: &str) -> Detection {
    // Executable mappings only: a file a process only reads (as Baton's symbolizer maps the
    // files it reads) runs no interpreter.
    let mut candidates: Vec<MapEntry> = Vec::new();
    for e in parse_maps(maps) {
        let name = e.path.rsplit('/').next().unwrap_or("");
        let python = name.starts_with("libpython") || name.starts_with("python");
        if python && e.path.starts_with('/') && !candidates.iter().any(|c| c.path == e.path) {
            candidates.push(e);
        }
    }
    if candidates.is_empty() {
        return Detection::NotPython;
    }
    // The file that holds the runtime: the executable (Debian's static python3.11) or
    // libpython (pyenv's builds, whose executable only links it).
    let found = candidates.iter().find_map(|m| {
        let syms = cached_symbols(pid, m)?;
        let rt = syms.runtime?;
        Some((m, syms, rt))
    });
    let Some((m, syms, runtime_sym)) = found else {
        let named = candidates.iter().find_map(|m| {
            let name = m.path.rsplit('/').next().unwrap_or("");
            version_from_name(name).map(|v| (v, name))
        });
        return match named {
            Some(((major, minor), name)) if major == 2 || (major, minor) < (3, 8) => {
                Detection::Unsupported(format!(
                    "Python {major}.{minor} ({name}): only CPython 3.8 to 3.13 are unwound"
                ))
            }
            Some(((major, minor), name)) => Detection::Unsupported(format!(
                "Python {major}.{minor} ({name}): no _PyRuntime symbol was found"
            )),
            None => Detection::NotPython,
        };
    };
    let name = m.path.rsplit('/').next().unwrap_or("").to_string();
    // The load bias: where the mapping is, against where the file says its code is.
    let Some(svma) = syms.svma_of_offset(m.file_offset) else {
        return Detection::Unsupported(format!("{name}: its mapping is outside its segments"));
    };
    let bias = m.start.wrapping_sub(svma);
    let runtime = runtime_sym.wrapping_add(bias);
    let mem = ProcMem::new(pid);
    // Py_Version (3.11+) is the full hex version; older ones are named by their file.
    let version = syms
        .version
        .and_then(|a| mem.read_u32(a.wrapping_add(bias)).ok())
        .map(|hex| ((hex >> 24) as u8, (hex >> 16) as u8))
        .or_else(|| version_from_name(&name));
    let Some(version) = version else {
        return Detection::Unsupported(format!("{name}: its version could not be told"));
    };
    let Some((eval_start, eval_end)) = syms.eval else {
        return Detection::Unsupported(format!(
            "Python {}.{} ({name}): _PyEval_EvalFrameDefault is not among its symbols",
            version.0, version.1
        ));
    };
    let eval = (eval_start.wrapping_add(bias), eval_end.wrapping_add(bias));
    let (layout, from_runtime) = if version >= (3, 13) {
        match debug_offsets(&mem, runtime, version) {
            Ok(l) => (l, true),
            Err(why) => {
                return Detection::Unsupported(format!(
                    "Python {}.{} ({name}): {why}",
                    version.0, version.1
                ))
            }
        }
    } else {
        match layout_of(version) {
            Some(l) => (l, false),
            None => {
                return Detection::Unsupported(format!(
                    "Python {}.{} ({name}): only CPython 3.8 to 3.13 are unwound",
                    version.0, version.1
                ))
            }
        }
    };
    Detection::Python(Box::new(PythonProc {
        layout,
        runtime,
        eval,
        object: m.path.clone(),
        from_runtime,
        code_type: syms.code_type.map(|a| a.wrapping_add(bias)),
    }))
}

// Where 3.13's `_Py_DebugOffsets` (at the start of `_PyRuntime`) keeps each offset, in bytes
// from its start: each is a u64. (From the 3.13 headers: cookie[8], version, free_threaded,
// then per struct a `size` followed by its fields.)
const DBG_COOKIE: &[u8; 8] = b"xdebugpy";
const DBG_VERSION: u64 = 8;
const DBG_FREE_THREADED: u64 = 16;
const DBG_RUNTIME_INTERPRETERS_HEAD: u64 = 40;
const DBG_INTERP_THREADS_HEAD: u64 = 72;
const DBG_TSTATE_NEXT: u64 = 168;
const DBG_TSTATE_CURRENT_FRAME: u64 = 184;
const DBG_TSTATE_THREAD_ID: u64 = 192;
const DBG_FRAME_PREVIOUS: u64 = 232;
const DBG_FRAME_EXECUTABLE: u64 = 240;
const DBG_FRAME_INSTR_PTR: u64 = 248;
const DBG_FRAME_OWNER: u64 = 264;
const DBG_CODE_FILENAME: u64 = 280;
const DBG_CODE_NAME: u64 = 288;
const DBG_CODE_QUALNAME: u64 = 296;
const DBG_CODE_LINETABLE: u64 = 304;
const DBG_CODE_FIRSTLINENO: u64 = 312;
const DBG_CODE_ADAPTIVE: u64 = 344;

/// The layout a 3.13+ process publishes in `_PyRuntime.debug_offsets`; the fields it does not
/// publish (string and bytes objects' layout) come from the table's newest entry.
fn debug_offsets(mem: &ProcMem, runtime: u64, version: (u8, u8)) -> Result<PyLayout, String> {
    let mut cookie = [0u8; 8];
    mem.read(runtime, &mut cookie)
        .map_err(|e| format!("_PyRuntime could not be read: {e}"))?;
    if &cookie != DBG_COOKIE {
        return Err("_PyRuntime does not start with its debug offsets".into());
    }
    let at = |off: u64| -> Result<usize, String> {
        mem.read_u64(runtime + off)
            .map(|v| v as usize)
            .map_err(|e| format!("_PyRuntime's debug offsets could not be read: {e}"))
    };
    let hex = at(DBG_VERSION)? as u64;
    if ((hex >> 24) as u8, (hex >> 16) as u8) != version {
        return Err(format!("its debug offsets are for version {hex:#x}"));
    }
    if at(DBG_FREE_THREADED)? != 0 {
        return Err("free-threaded builds are not unwound".into());
    }
    // Versions after 3.13 changed how frames hold their code (tagged references): not read
    // until they are tested.
    if version > (3, 13) {
        return Err("only CPython 3.8 to 3.13 are unwound".into());
    }
    let base = *LAYOUTS.last().ok_or("no layout table")?;
    Ok(PyLayout {
        version,
        runtime_interpreters_head: at(DBG_RUNTIME_INTERPRETERS_HEAD)?,
        interp_threads_head: at(DBG_INTERP_THREADS_HEAD)?,
        tstate_next: at(DBG_TSTATE_NEXT)?,
        tstate_thread_id: at(DBG_TSTATE_THREAD_ID)?,
        tstate_frame: at(DBG_TSTATE_CURRENT_FRAME)?,
        cframe_current_frame: 0,
        frame_code: at(DBG_FRAME_EXECUTABLE)?,
        frame_instr: at(DBG_FRAME_INSTR_PTR)?,
        frame_previous: at(DBG_FRAME_PREVIOUS)?,
        frame_owner: at(DBG_FRAME_OWNER)?,
        frame_is_entry: 0,
        code_adaptive: at(DBG_CODE_ADAPTIVE)?,
        code_qualname: at(DBG_CODE_QUALNAME)?,
        code_filename: at(DBG_CODE_FILENAME)?,
        code_name: at(DBG_CODE_NAME)?,
        code_firstlineno: at(DBG_CODE_FIRSTLINENO)?,
        code_linetable: at(DBG_CODE_LINETABLE)?,
        ..base
    })
}

/// What a code object names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodeInfo {
    /// `co_qualname` (3.11+), else `co_name`.
    pub name: String,
    pub file: String,
    pub first_line: u32,
    pub linetable: Vec<u8>,
}

/// Reads a `str` object (compact, as every code object's names are).
fn read_str(mem: &ProcMem, l: &PyLayout, obj: u64) -> Result<String, String> {
    let len = mem.read_u64(obj + l.unicode_length as u64)? as usize;
    if len > 4096 {
        return Err(format!("a string of {len} characters"));
    }
    let state = mem.read_u32(obj + l.unicode_state as u64)?;
    let kind = (state >> 2) & 7;
    let compact = (state >> 5) & 1;
    let ascii = (state >> 6) & 1;
    if compact == 0 {
        return Err("a string that is not compact".into());
    }
    if ascii == 1 {
        let mut b = vec![0u8; len];
        mem.read(obj + l.unicode_ascii_data as u64, &mut b)?;
        return Ok(String::from_utf8_lossy(&b).into_owned());
    }
    let width = match kind {
        1 => 1,
        2 => 2,
        4 => 4,
        k => return Err(format!("a string of kind {k}")),
    };
    let mut b = vec![0u8; len * width];
    mem.read(obj + l.unicode_compact_data as u64, &mut b)?;
    Ok(b.chunks(width)
        .map(|c| {
            let mut v = 0u32;
            for (i, x) in c.iter().enumerate() {
                v |= (*x as u32) << (8 * i);
            }
            char::from_u32(v).unwrap_or('\u{fffd}')
        })
        .collect())
}

fn read_bytes(mem: &ProcMem, l: &PyLayout, obj: u64) -> Result<Vec<u8>, String> {
    let len = mem.read_u64(obj + l.bytes_size as u64)? as usize;
    if len > 1 << 20 {
        return Err(format!("a line table of {len} bytes"));
    }
    let mut b = vec![0u8; len];
    mem.read(obj + l.bytes_data as u64, &mut b)?;
    Ok(b)
}

/// Reads the code object at `code`.
pub(crate) fn read_code(mem: &ProcMem, l: &PyLayout, code: u64) -> Result<CodeInfo, String> {
    let ptr = |off: usize| mem.read_u64(code + off as u64);
    let name_obj = if l.code_qualname != 0 {
        ptr(l.code_qualname)?
    } else {
        ptr(l.code_name)?
    };
    Ok(CodeInfo {
        name: read_str(mem, l, name_obj)?,
        file: read_str(mem, l, ptr(l.code_filename)?)?,
        first_line: mem.read_u32(code + l.code_firstlineno as u64)?,
        linetable: read_bytes(mem, l, ptr(l.code_linetable)?)?,
    })
}

/// The line of the instruction at `offset` (code units, each two bytes; for 3.8 and 3.9 a byte
/// offset) in a code object of `version`.
pub(crate) fn line_of(version: (u8, u8), code: &CodeInfo, offset: u32) -> u32 {
    let first = code.first_line as i64;
    let t = &code.linetable;
    let line = match version {
        (3, 8) | (3, 9) => {
            // co_lnotab: (byte delta, signed line delta) pairs.
            let mut addr = 0i64;
            let mut line = first;
            for p in t.chunks_exact(2) {
                addr += p[0] as i64;
                if addr > offset as i64 {
                    break;
                }
                line += p[1] as i8 as i64;
            }
            line
        }
        (3, 10) => {
            // co_linetable: (byte delta, signed line delta) pairs, -128 for "no line".
            let target = offset as i64 * 2;
            let (mut start, mut line) = (0i64, first);
            let mut found = first;
            for p in t.chunks_exact(2) {
                let end = start + p[0] as i64;
                let delta = p[1] as i8;
                let this = if delta == -128 {
                    -1
                } else {
                    line += delta as i64;
                    line
                };
                if target >= start && target < end {
                    found = if this < 0 { found } else { this };
                    break;
                }
                if this >= 0 {
                    found = this;
                }
                start = end;
            }
            found
        }
        _ => location_table_line(t, first, offset as i64),
    };
    line.max(0) as u32
}

/// 3.11+'s location table: entries of `1 cccc lll` (code, length - 1 in code units), then by
/// code: 0-9 one column byte (same line); 10-12 line + code - 10 and two column bytes; 13 a
/// signed varint line delta; 14 that, then three varints (end line, columns); 15 no location.
fn location_table_line(t: &[u8], first: i64, target: i64) -> i64 {
    let mut i = 0usize;
    let mut addr = 0i64;
    let mut line = first;
    let mut last_known = first;
    let varint = |i: &mut usize| -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while *i < t.len() {
            let b = t[*i];
            *i += 1;
            v |= ((b & 63) as u64) << shift;
            shift += 6;
            if b & 64 == 0 {
                break;
            }
        }
        v
    };
    let svarint = |i: &mut usize| -> i64 {
        let u = varint(i);
        if u & 1 == 1 {
            -((u >> 1) as i64)
        } else {
            (u >> 1) as i64
        }
    };
    while i < t.len() {
        let b = t[i];
        i += 1;
        let code = (b >> 3) & 15;
        let len = (b & 7) as i64 + 1;
        let mut known = true;
        match code {
            15 => known = false,
            14 => {
                line += svarint(&mut i);
                varint(&mut i);
                varint(&mut i);
                varint(&mut i);
            }
            13 => line += svarint(&mut i),
            10..=12 => {
                line += code as i64 - 10;
                i += 2;
            }
            _ => i += 1,
        }
        if known {
            last_known = line;
        }
        if target >= addr && target < addr + len {
            return if known { line } else { last_known };
        }
        addr += len;
    }
    last_known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executable_mappings_count() {
        // A file only read (as a symbolizer maps the files it reads) runs no interpreter.
        let maps = "\
7f0000000000-7f0000100000 r--s 00000000 fe:00 1 /usr/lib/libpython3.11.so.1.0
400000-401000 r--p 00000000 fe:00 2 /usr/bin/python3.11
";
        assert!(matches!(detect(1, maps), Detection::NotPython));
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(version_from_name("python3.8"), Some((3, 8)));
        assert_eq!(version_from_name("libpython2.7.so.1.0"), Some((2, 7)));
        assert_eq!(version_from_name("python3"), None);
        assert_eq!(version_from_name("pythonista"), None);
    }

    #[test]
    fn every_supported_version_has_a_layout_and_a_family() {
        for minor in 8..=13u8 {
            let l = layout_of((3, minor)).expect("layout");
            let f = l.family();
            assert_eq!(f == Family::FrameObjects, minor <= 10);
        }
        assert!(layout_of((3, 7)).is_none());
        assert!(layout_of((2, 7)).is_none());
    }

    fn code(first: u32, t: &[u8]) -> CodeInfo {
        CodeInfo {
            name: "f".into(),
            file: "f.py".into(),
            first_line: first,
            linetable: t.to_vec(),
        }
    }

    #[test]
    fn lnotab_of_3_8() {
        // Bytes 0..6 on line 10, 6..20 on 12, 20.. on 11.
        let c = code(10, &[6, 2, 14, 255]);
        assert_eq!(line_of((3, 8), &c, 0), 10);
        assert_eq!(line_of((3, 8), &c, 8), 12);
        assert_eq!(line_of((3, 8), &c, 24), 11);
    }

    #[test]
    fn linetable_of_3_10() {
        // Units 0..3 (bytes 0..6) on line 10 + 1, bytes 6..10 with no line, 10..16 on 13.
        let c = code(10, &[6, 1, 4, 128, 6, 2]);
        assert_eq!(line_of((3, 10), &c, 0), 11);
        assert_eq!(line_of((3, 10), &c, 6), 13);
    }

    #[test]
    fn location_table_of_3_11() {
        // Entry 1: code 13 (no columns), 2 units, line +1. Entry 2: code 11 (one line, +1),
        // 3 units, two column bytes. Entry 3: short form (code 0), 1 unit, same line.
        // Entry 4: code 15 (no location), 1 unit. Entry 5: long form (14), 1 unit, line -2.
        let t = [
            0x80 | (13 << 3) | 1,
            2, // svarint +1
            0x80 | (11 << 3) | 2,
            0,
            5,
            0x80, // short form (code 0)
            7,
            0x80 | (15 << 3),
            0x80 | (14 << 3),
            5, // svarint -2
            0,
            0,
            0,
        ];
        let c = code(20, &t);
        // Code 10 is a one-line form too (line + 0, two column bytes), not a short form.
        let ten = code(20, &[0x80 | (10 << 3), 4, 9, 0x80 | (13 << 3), 4]);
        assert_eq!(line_of((3, 12), &ten, 0), 20);
        assert_eq!(line_of((3, 12), &ten, 1), 22);
        assert_eq!(line_of((3, 11), &c, 0), 21);
        assert_eq!(line_of((3, 11), &c, 1), 21);
        assert_eq!(line_of((3, 11), &c, 2), 22);
        assert_eq!(line_of((3, 11), &c, 5), 22);
        assert_eq!(line_of((3, 11), &c, 6), 22);
        assert_eq!(line_of((3, 11), &c, 7), 20);
    }
}
