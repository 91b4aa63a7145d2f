//! Brendan Gregg's collapsed stacks: `root;child;leaf VALUE`, one stack per line.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::profile::Profile;

/// Collapsed lines, merged by stack, root first. Values are sample counts when the period is
/// known (what `stackcollapse-perf.pl` users expect), otherwise the weighted value.
pub fn lines(profile: &Profile) -> Vec<String> {
    let mut merged: BTreeMap<String, f64> = BTreeMap::new();
    for (names, v) in profile.named_stacks() {
        let key = names
            .iter()
            .rev()
            .map(|n| n.replace(';', ":"))
            .collect::<Vec<_>>()
            .join(";");
        *merged.entry(key).or_default() += v;
    }
    merged
        .into_iter()
        .filter_map(|(k, v)| {
            let n = profile.as_sample_count(v).round() as u64;
            (n > 0 && !k.is_empty()).then(|| format!("{k} {n}"))
        })
        .collect()
}

pub fn write(profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
    for l in lines(profile) {
        writeln!(out, "{l}")?;
    }
    Ok(())
}
