//! The LLVM sample profile: functions with body counts by line offset and discriminator, inline
//! call sites as nested profiles, call targets from the callers in each stack, and its text form.

use std::collections::BTreeMap;
use std::io::Write;

use super::{Coverage, FdoBinary, Loc, Lookup, Samples};

/// `(line offset from the function's start line, base discriminator)`.
pub type LineKey = (u32, u32);

/// A body line: samples whose address is on it, and the functions called from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyLine {
    pub samples: f64,
    pub targets: BTreeMap<String, f64>,
}

/// One function's samples, or one inlined instance's inside its caller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionSamples {
    pub name: String,
    pub total: f64,
    /// Entries into the function, estimated from the samples under calls to it from the
    /// binary's own code (without branch records there is no exact count).
    pub head: f64,
    pub body: BTreeMap<LineKey, BodyLine>,
    pub inlined: BTreeMap<LineKey, BTreeMap<String, FunctionSamples>>,
}

impl FunctionSamples {
    fn new(name: &str) -> Self {
        FunctionSamples {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// The innermost instance of a chain, creating the inlined instances on the way and
    /// adding `total` to each level.
    fn descend(&mut self, chain: &[Loc], total: f64) -> &mut FunctionSamples {
        self.total += total;
        let mut node = self;
        for w in chain.windows(2) {
            let key = line_key(&w[0]);
            let callee = &w[1].function;
            node = node
                .inlined
                .entry(key)
                .or_default()
                .entry(callee.clone())
                .or_insert_with(|| FunctionSamples::new(callee));
            node.total += total;
        }
        node
    }

    fn has_targets(&self) -> bool {
        self.body
            .values()
            .any(|b| b.targets.values().any(|&c| round(c) > 0))
            || self
                .inlined
                .values()
                .flat_map(|m| m.values())
                .any(|f| f.has_targets())
    }

    fn write(&self, out: &mut impl Write, depth: usize, top: bool) -> std::io::Result<()> {
        if top {
            writeln!(
                out,
                "{}:{}:{}",
                self.name,
                round(self.total),
                round(self.head)
            )?;
        }
        let pad = " ".repeat(depth + 1);
        let mut keys: Vec<LineKey> = self
            .body
            .keys()
            .chain(self.inlined.keys())
            .copied()
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if let Some(b) = self.body.get(&key) {
                let targets: Vec<String> = b
                    .targets
                    .iter()
                    .filter(|(_, &c)| round(c) > 0)
                    .map(|(t, &c)| format!(" {t}:{}", round(c)))
                    .collect();
                if round(b.samples) > 0 || !targets.is_empty() {
                    writeln!(
                        out,
                        "{pad}{}: {}{}",
                        fmt_key(key),
                        round(b.samples),
                        targets.concat()
                    )?;
                }
            }
            for callee in self.inlined.get(&key).into_iter().flat_map(|m| m.values()) {
                if round(callee.total) == 0 && !callee.has_targets() {
                    continue;
                }
                writeln!(
                    out,
                    "{pad}{}: {}:{}",
                    fmt_key(key),
                    callee.name,
                    round(callee.total).max(1)
                )?;
                callee.write(out, depth + 1, false)?;
            }
        }
        Ok(())
    }
}

fn round(v: f64) -> u64 {
    v.round().max(0.0) as u64
}

fn fmt_key((offset, disc): LineKey) -> String {
    if disc == 0 {
        format!("{offset}")
    } else {
        format!("{offset}.{disc}")
    }
}

/// As LLVM keys a location: its line's distance from the function's start line, in 16 bits.
fn line_key(l: &Loc) -> LineKey {
    (l.line.wrapping_sub(l.start_line) & 0xffff, l.discriminator)
}

/// A whole sample profile, by function name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleProfile {
    pub functions: BTreeMap<String, FunctionSamples>,
}

impl SampleProfile {
    /// Builds the profile of `samples` against the binary they were taken from.
    pub fn build(bin: &FdoBinary, samples: &Samples) -> (SampleProfile, Coverage) {
        let mut p = SampleProfile::default();
        let mut cov = Coverage {
            binary_has_lines: bin.has_lines(),
            ..Default::default()
        };
        let mut cache: BTreeMap<u64, Lookup> = BTreeMap::new();
        let mut resolve = |addr: u64| -> Lookup {
            cache
                .entry(addr)
                .or_insert_with(|| match bin.vaddr(addr) {
                    Some(va) => bin.lookup(va),
                    None => Lookup::NoFunction,
                })
                .clone()
        };
        for s in &samples.stacks {
            let w = s.count;
            match s.frames.first() {
                Some(Some(leaf)) => {
                    cov.samples += w;
                    match resolve(*leaf) {
                        Lookup::Found(chain) => {
                            cov.mapped += w;
                            let top = p
                                .functions
                                .entry(chain[0].function.clone())
                                .or_insert_with(|| FunctionSamples::new(&chain[0].function));
                            let inner = top.descend(&chain, w);
                            let last = chain.last().map(line_key).unwrap_or_default();
                            inner.body.entry(last).or_default().samples += w;
                        }
                        Lookup::NoLine => cov.no_line_table += w,
                        Lookup::LineZero => cov.line_zero += w,
                        Lookup::NoStartLine => cov.no_start_line += w,
                        Lookup::NoFunction => cov.outside_functions += w,
                    }
                }
                _ => cov.leaf_elsewhere += w,
            }
            // Each caller frame's call site names the function the frame below it is in;
            // a (site, target) pair counts once per stack, however often recursion repeats it.
            let mut seen: std::collections::HashSet<(u64, String)> = Default::default();
            for pair in s.frames.windows(2) {
                let (Some(callee), Some(caller)) = (pair[0], pair[1]) else {
                    continue;
                };
                let Lookup::Found(callee_chain) = resolve(callee) else {
                    continue;
                };
                // Caller frames are stored one byte before their return address, inside the
                // call instruction, so the address is the call's own.
                let Lookup::Found(site) = resolve(caller) else {
                    continue;
                };
                let target = callee_chain[0].function.clone();
                if !seen.insert((caller, target.clone())) {
                    continue;
                }
                let top = p
                    .functions
                    .entry(site[0].function.clone())
                    .or_insert_with(|| FunctionSamples::new(&site[0].function));
                let inner = top.descend(&site, 0.0);
                let key = site.last().map(line_key).unwrap_or_default();
                *inner
                    .body
                    .entry(key)
                    .or_default()
                    .targets
                    .entry(target.clone())
                    .or_default() += w;
                p.functions
                    .entry(target.clone())
                    .or_insert_with(|| FunctionSamples::new(&target))
                    .head += w;
            }
        }
        // A function sampled too little to count still keeps the call targets it has (an
        // indirect call's dispatcher may spend little time itself), with a total of 1.
        p.functions
            .retain(|_, f| round(f.total) > 0 || f.has_targets());
        for f in p.functions.values_mut() {
            f.total = f.total.max(1.0);
        }
        (p, cov)
    }

    /// The LLVM text format, hottest function first.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for f in self.hottest() {
            f.write(out, 0, true)?;
        }
        Ok(())
    }

    /// Functions by total samples, most first.
    pub fn hottest(&self) -> Vec<&FunctionSamples> {
        let mut v: Vec<&FunctionSamples> = self.functions.values().collect();
        v.sort_by(|a, b| b.total.total_cmp(&a.total).then(a.name.cmp(&b.name)));
        v
    }

    pub fn total(&self) -> f64 {
        self.functions.values().map(|f| f.total).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(f: &str, start: u32, line: u32) -> Loc {
        Loc {
            function: f.into(),
            start_line: start,
            line,
            discriminator: 0,
        }
    }

    #[test]
    fn inlined_chains_nest_and_totals_add_up() {
        let mut top = FunctionSamples::new("main");
        let chain = [loc("main", 10, 14), loc("helper", 40, 43)];
        top.descend(&chain, 5.0)
            .body
            .entry((3, 0))
            .or_default()
            .samples += 5.0;
        top.descend(&chain[..1], 2.0)
            .body
            .entry((4, 0))
            .or_default()
            .samples += 2.0;
        let mut out = Vec::new();
        top.write(&mut out, 0, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "main:7:0\n 4: 2\n 4: helper:5\n  3: 5\n"
        );
    }

    #[test]
    fn discriminators_and_call_targets_are_written_as_llvm_reads_them() {
        let mut f = FunctionSamples::new("run");
        f.total = 9.0;
        let b = f.body.entry((7, 2)).or_default();
        b.samples = 4.0;
        b.targets.insert("op_add".into(), 30.0);
        b.targets.insert("op_hash".into(), 0.2);
        let mut out = Vec::new();
        f.write(&mut out, 0, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "run:9:0\n 7.2: 4 op_add:30\n"
        );
    }
}
