//! Parsing of `/proc/PID/maps`, keeping the executable mappings.

/// One executable mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub dev: u64,
    pub inode: u64,
    /// File path, or a pseudo name such as `[vdso]` or `[anon]`.
    pub path: String,
}

/// Parses the text of `/proc/PID/maps`, keeping executable mappings only.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(off), Some(dev), Some(inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        if !perms.contains('x') {
            continue;
        }
        let rest: Vec<&str> = it.collect();
        let mut path = rest.join(" ");
        if let Some(p) = path.strip_suffix(" (deleted)") {
            path = p.to_string();
        }
        if path.is_empty() {
            path = "[anon]".to_string();
        }
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(file_offset)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        let dev = dev
            .split_once(':')
            .and_then(|(ma, mi)| {
                Some((u64::from_str_radix(ma, 16).ok()? << 32) | u64::from_str_radix(mi, 16).ok()?)
            })
            .unwrap_or(0);
        out.push(MapEntry {
            start,
            end,
            file_offset,
            dev,
            inode: inode.parse().unwrap_or(0),
            path,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_mappings() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234 /usr/bin/app
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:01 1234 /usr/bin/app
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 
7ffd1234000-7ffd1236000 r-xp 00000000 00:00 0 [vdso]
7f1000000000-7f1000100000 r-xp 00028000 fe:01 99 /tmp/my lib.so (deleted)
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/usr/bin/app");
        assert_eq!(m[0].file_offset, 0x1000);
        assert_eq!(m[1].path, "[anon]");
        assert_eq!(m[2].path, "[vdso]");
        assert_eq!(m[3].path, "/tmp/my lib.so");
        assert_eq!(m[0].dev, (0xfe << 32) | 1);
    }
}
