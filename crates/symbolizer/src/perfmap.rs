//! JIT symbol maps in the perf format: `/tmp/perf-PID.map`, one `START SIZE name` line (hex
//! start and size) per compiled method, as written by Node (`--perf-basic-prof`), the JVM
//! (`jcmd PID Compiler.perfmap`) and other runtimes.

use std::path::PathBuf;

/// One process's map, sorted by start address.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
    /// Length of the file when it was read, to re-read only when it grew.
    pub(crate) read_len: u64,
}

impl PerfMap {
    /// Parses a map's text. Malformed lines are skipped. Later lines win where ranges overlap
    /// (a runtime that recompiles a method writes it again).
    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, String)> = Vec::new();
        for line in text.lines() {
            let mut it = line.splitn(3, ' ');
            let (Some(start), Some(size), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let (Some(start), Some(size)) = (parse(start), parse(size)) else {
                continue;
            };
            if size == 0 {
                continue;
            }
            entries.push((start, start.saturating_add(size), name.trim().to_string()));
        }
        // Stable sort keeps file order among equal starts; lookups take the last match.
        entries.sort_by_key(|e| e.0);
        PerfMap {
            entries,
            read_len: text.len() as u64,
        }
    }

    /// The name of the method containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        // Look back over the entries starting at or before `addr` for one that contains it;
        // overlaps are rare, so this stays short.
        self.entries[..i]
            .iter()
            .rev()
            .take(64)
            .find(|e| addr < e.1)
            .map(|e| e.2.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where this host finds the map of `pid`: inside the process's own root and under its pid in
/// its own pid namespace (the last `NSpid` of `/proc/PID/status`), so containers work too.
pub fn path_of(pid: u32) -> PathBuf {
    let ns_pid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().map(str::to_string))
        })
        .unwrap_or_else(|| pid.to_string());
    let inside = PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map"));
    if inside.exists() {
        inside
    } else {
        // The process is gone: its map may still be in this host's /tmp.
        PathBuf::from(format!("/tmp/perf-{pid}.map"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_methods_by_address() {
        let m = PerfMap::parse(
            "3b6b0a2a040 1c0 LazyCompile:*hot /app/x.js:3\n\
             bad line\n\
             3b6b0a2a300 80 Builtin:ArgumentsAdaptorTrampoline\n\
             7f0000001000 0 empty\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.lookup(0x3b6b0a2a040),
            Some("LazyCompile:*hot /app/x.js:3")
        );
        assert_eq!(
            m.lookup(0x3b6b0a2a1ff),
            Some("LazyCompile:*hot /app/x.js:3")
        );
        assert_eq!(m.lookup(0x3b6b0a2a200), None);
        assert_eq!(
            m.lookup(0x3b6b0a2a37f),
            Some("Builtin:ArgumentsAdaptorTrampoline")
        );
        assert_eq!(m.lookup(0x1), None);
    }

    #[test]
    fn a_recompiled_method_wins() {
        let m = PerfMap::parse("1000 100 old\n1000 100 new\n");
        assert_eq!(m.lookup(0x1010), Some("new"));
    }
}
