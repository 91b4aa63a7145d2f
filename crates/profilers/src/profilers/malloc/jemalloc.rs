//! jemalloc linked into a program statically: where its profiling functions are, so the malloc
//! profiler can probe them.
//!
//! A program that carries its own jemalloc (a Rust service built with `tikv-jemallocator`, a C++
//! server linked with `libjemalloc.a`) calls its internal `malloc`, where nothing can be
//! preloaded. jemalloc's own sampling still works there (`MALLOC_CONF=prof:true,...`), and it
//! calls `prof_malloc_sample_object` for each allocation it sampled, and
//! `prof_free_sampled_object` when one of those is freed, and for no other. Uprobes on those two
//! trap only for samples. They need the program's symbol table (an unstripped binary), and the
//! argument layout of jemalloc 5.3.

use std::ops::Range;
use std::path::Path;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// The entry points a program calls, past which a sample's frames are jemalloc's own.
const ENTRIES: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "mallocx",
    "rallocx",
    "xallocx",
];

/// Where a statically linked jemalloc's profiling lives in one executable.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticJemalloc {
    /// `prof_malloc_sample_object` and `prof_free_sampled_object`, with jemalloc's prefix.
    pub sampled_fn: String,
    pub freed_fn: String,
    /// Stated addresses of `prof_malloc_sample_object`, `lg_prof_sample` and `opt_prof`.
    sampled_at: u64,
    lg_sample_at: u64,
    opt_prof_at: Option<u64>,
    /// Stated address ranges of jemalloc's functions: its entry points and everything with its
    /// internal prefix, sorted by start (a sample's frames are looked up in them).
    entries: Vec<Range<u64>>,
    /// The lowest stated address of a loaded segment, and whether the file is position
    /// independent: how a process's mappings give the load bias.
    base: u64,
    relocatable: bool,
    /// The environment variable this jemalloc reads its options from: `MALLOC_CONF`, or with
    /// its public prefix (`_RJEM_MALLOC_CONF` for `tikv-jemallocator`).
    pub conf_env: String,
}

impl StaticJemalloc {
    /// Reads `path`'s symbols; `None` when it carries no jemalloc with profiling symbols.
    pub fn read(path: &Path) -> Option<StaticJemalloc> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        const SAMPLED: &str = "prof_malloc_sample_object";
        let symbols: Vec<_> = file.symbols().chain(file.dynamic_symbols()).collect();
        let sampled = symbols.iter().find(|s| {
            s.kind() == SymbolKind::Text && s.name().is_ok_and(|n| n.ends_with(SAMPLED))
        })?;
        let name = sampled.name().ok()?;
        // jemalloc's internal prefix (`je_`, `_rjem_je_`) and its public one (``, `_rjem_`).
        let internal = &name[..name.len() - SAMPLED.len()];
        let public = internal.strip_suffix("je_").unwrap_or(internal);
        let find = |n: &str| {
            symbols
                .iter()
                .find(|s| s.name().is_ok_and(|x| x == n))
                .map(|s| (s.address(), s.size()))
        };
        let freed_fn = format!("{internal}prof_free_sampled_object");
        find(&freed_fn)?;
        let (lg_sample_at, _) = find(&format!("{internal}lg_prof_sample"))?;
        let opt_prof_at = find(&format!("{internal}opt_prof")).map(|(a, _)| a);
        let mut entries: Vec<Range<u64>> = symbols
            .iter()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .filter(|s| {
                s.name().is_ok_and(|n| {
                    let bare = n.strip_prefix(public).unwrap_or(n);
                    (!internal.is_empty() && n.starts_with(internal))
                        || ENTRIES.contains(&bare)
                        || bare.starts_with("_Znwm")
                        || bare.starts_with("_Znam")
                })
            })
            .map(|s| s.address()..s.address() + s.size())
            .collect();
        entries.sort_by_key(|r| (r.start, r.end));
        entries.dedup();
        let base = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
        Some(StaticJemalloc {
            sampled_fn: name.to_string(),
            freed_fn,
            sampled_at: sampled.address(),
            lg_sample_at,
            opt_prof_at,
            entries,
            base,
            relocatable: file.kind() == object::ObjectKind::Dynamic,
            conf_env: format!("{}MALLOC_CONF", public.to_ascii_uppercase()),
        })
    }

    /// The attach cookie of the sampling probe: from `prof_malloc_sample_object` to
    /// `lg_prof_sample`, which BPF adds to the probe's address to read the sampling period.
    pub fn cookie(&self) -> u64 {
        self.lg_sample_at.wrapping_sub(self.sampled_at)
    }

    /// How many leading frames of a sample's stack to drop: those inside jemalloc but its
    /// outermost, the function the program called (`malloc`, or `malloc_default` where
    /// `malloc` reached it by a tail call and left no frame). The first frame is the probe's
    /// own address, which gives the load bias.
    pub fn frames_inside(&self, stack: &[u64]) -> usize {
        let Some(&ip) = stack.first() else { return 0 };
        let bias = ip.wrapping_sub(self.sampled_at);
        let inside = stack
            .iter()
            .enumerate()
            .take_while(|&(i, &a)| {
                // A return address points just past its call.
                let at = a.wrapping_sub(bias).wrapping_sub(u64::from(i > 0));
                self.inside(at)
            })
            .count();
        inside.saturating_sub(1)
    }

    /// Whether the stated address `at` is in one of jemalloc's functions.
    fn inside(&self, at: u64) -> bool {
        let i = self.entries.partition_point(|r| r.start <= at);
        i > 0 && self.entries[i - 1].contains(&at)
    }

    /// Whether jemalloc's profiling is on in process `pid` (its `opt_prof`, read from its
    /// memory); `None` when that cannot be read. Without it jemalloc samples nothing.
    pub fn profiling_on(&self, pid: u32) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        let at = self.opt_prof_at?;
        let bias = if self.relocatable {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let exe = exe.to_str()?.trim_end_matches(" (deleted)").to_string();
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
            let start = maps.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 6 && f[2].trim_start_matches('0').is_empty() && f[5] == exe)
                    .then(|| u64::from_str_radix(f[0].split('-').next()?, 16).ok())
                    .flatten()
            })?;
            start.wrapping_sub(self.base)
        } else {
            0
        };
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
        let mut b = [0u8; 1];
        mem.read_exact_at(&mut b, at.wrapping_add(bias)).ok()?;
        Some(b[0] != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StaticJemalloc {
        StaticJemalloc {
            sampled_fn: "je_prof_malloc_sample_object".into(),
            freed_fn: "je_prof_free_sampled_object".into(),
            sampled_at: 0x9000,
            lg_sample_at: 0x40_0000,
            opt_prof_at: None,
            entries: vec![0x2000..0x2100, 0x7000..0x7200, 0x9000..0x9100],
            base: 0,
            relocatable: true,
            conf_env: "MALLOC_CONF".into(),
        }
    }

    #[test]
    fn frames_up_to_the_entry_point_are_jemallocs() {
        let je = sample();
        let bias = 0x5555_0000_0000;
        // probe, malloc_default, malloc, the caller: malloc stays.
        let stack = [bias + 0x9000, bias + 0x7123, bias + 0x2042, bias + 0x1234];
        assert_eq!(je.frames_inside(&stack), 2);
        // malloc tail-called malloc_default: it stays, as the function the caller entered.
        assert_eq!(
            je.frames_inside(&[bias + 0x9000, bias + 0x7123, bias + 0x1234]),
            1
        );
        // A return address just past a call at a function's last byte is still inside it.
        assert_eq!(
            je.frames_inside(&[bias + 0x9000, bias + 0x7200, bias + 0x1234]),
            1
        );
        assert_eq!(je.frames_inside(&[bias + 0x9000]), 0);
        assert_eq!(je.frames_inside(&[]), 0);
        // The cookie takes the probe's address to lg_prof_sample.
        assert_eq!((bias + 0x9000).wrapping_add(je.cookie()), bias + 0x40_0000);
    }
}
