//! The DWARF a sample profile needs: per address, the chain of inlined functions with each one's
//! start line (`DW_AT_decl_line`), the line and base discriminator inside it, and its linkage name.

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// One level of an address's inline chain: `line` and `discriminator` are where, inside
/// `function`, the address (or the call to the next level) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub function: String,
    pub start_line: u32,
    pub line: u32,
    pub discriminator: u32,
}

/// What DWARF says of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The chain, outermost (the function the address is in) first.
    Found(Vec<Loc>),
    /// A function, but no line for the address (no line table, or a stripped binary).
    NoLine,
    /// A line-table row of line 0: code the compiler made that belongs to no source line.
    LineZero,
    /// A function without its start line (`DW_AT_decl_line`), which line offsets count from:
    /// built without `-fdebug-info-for-profiling` and with too little debug info.
    NoStartLine,
    /// No DWARF function covers the address.
    NoFunction,
}

/// A contiguous run of line-table rows: `(address, line, discriminator)`, sorted.
struct Sequence {
    start: u64,
    end: u64,
    rows: Vec<(u64, u32, u32)>,
}

/// A concrete function or inlined instance and where it was called from (for inlined ones).
struct Node {
    name: Option<String>,
    decl_line: u32,
    call_line: u32,
    call_disc: u32,
    ranges: Vec<(u64, u64)>,
    children: Vec<usize>,
}

/// Every unit's functions, inlined instances and line rows, read once.
#[derive(Default)]
pub struct Tables {
    sequences: Vec<Sequence>,
    nodes: Vec<Node>,
    /// `(low, high, node)` of every concrete function's ranges, sorted by `low`.
    tops: Vec<(u64, u64, usize)>,
    /// Units that could not be read.
    pub bad_units: usize,
}

/// Inlining nests no deeper than this in any real program; a deeper tree is not followed.
const MAX_DEPTH: usize = 128;

impl Tables {
    /// Reads `.debug_info` and `.debug_line` of an ELF file (an empty table when it has none).
    pub fn read(file: &object::File<'_>) -> Result<Tables, String> {
        let endian = if file.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let sections = gimli::DwarfSections::load(|id| -> Result<_, String> {
            Ok(match file.section_by_name(id.name()) {
                Some(s) => s
                    .uncompressed_data()
                    .map_err(|e| format!("section {}: {e}", id.name()))?,
                None => std::borrow::Cow::Borrowed(&[][..]),
            })
        })?;
        let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
        let mut t = Tables::default();
        let mut units = dwarf.units();
        // A unit that cannot be read is skipped (and counted), not the whole binary.
        while let Some(header) = units.next().map_err(|e| e.to_string())? {
            let read = dwarf.unit(header).and_then(|unit| {
                t.read_lines(&unit)?;
                let mut tree = unit.entries_tree(None)?;
                let root = tree.root()?;
                t.walk(&dwarf, &unit, root, None, 0)
            });
            if read.is_err() {
                t.bad_units += 1;
            }
        }
        t.sequences.sort_by_key(|s| s.start);
        t.tops.sort_by_key(|r| r.0);
        Ok(t)
    }

    /// Whether any unit has a line table.
    pub fn has_lines(&self) -> bool {
        !self.sequences.is_empty()
    }

    fn read_lines(&mut self, unit: &gimli::Unit<R<'_>>) -> gimli::Result<()> {
        let Some(program) = unit.line_program.clone() else {
            return Ok(());
        };
        let mut rows = program.rows();
        let mut current: Vec<(u64, u32, u32)> = Vec::new();
        while let Some((_, row)) = rows.next_row()? {
            if row.end_sequence() {
                if let Some(&(start, _, _)) = current.first() {
                    let mut seq = std::mem::take(&mut current);
                    seq.sort_by_key(|r| r.0);
                    self.sequences.push(Sequence {
                        start,
                        end: row.address(),
                        rows: seq,
                    });
                }
                current.clear();
            } else {
                let line = row.line().map(|l| l.get()).unwrap_or(0);
                current.push((
                    row.address(),
                    u32::try_from(line).unwrap_or(u32::MAX),
                    u32::try_from(row.discriminator()).unwrap_or(0),
                ));
            }
        }
        Ok(())
    }

    fn walk<'d>(
        &mut self,
        dwarf: &gimli::Dwarf<R<'d>>,
        unit: &gimli::Unit<R<'d>>,
        node: gimli::EntriesTreeNode<'_, '_, R<'d>>,
        parent: Option<usize>,
        depth: usize,
    ) -> gimli::Result<()> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            let tag = e.tag();
            if tag != gimli::DW_TAG_subprogram && tag != gimli::DW_TAG_inlined_subroutine {
                self.walk(dwarf, unit, child, parent, depth + 1)?;
                continue;
            }
            let mut ranges = Vec::new();
            let mut it = dwarf.die_ranges(unit, e)?;
            while let Some(r) = it.next()? {
                if r.begin < r.end {
                    ranges.push((r.begin, r.end));
                }
            }
            if ranges.is_empty() {
                // A declaration or an abstract instance: named through the concrete ones.
                self.walk(dwarf, unit, child, parent, depth + 1)?;
                continue;
            }
            let inlined = tag == gimli::DW_TAG_inlined_subroutine;
            let (name, decl_line) = describe(dwarf, unit, e);
            let udata = |at| e.attr_value(at).and_then(|v| v.udata_value()).unwrap_or(0);
            let idx = self.nodes.len();
            self.nodes.push(Node {
                name,
                decl_line,
                call_line: if inlined {
                    udata(gimli::DW_AT_call_line) as u32
                } else {
                    0
                },
                call_disc: if inlined {
                    udata(gimli::DW_AT_GNU_discriminator) as u32
                } else {
                    0
                },
                ranges: ranges.clone(),
                children: Vec::new(),
            });
            match parent {
                Some(p) if inlined => self.nodes[p].children.push(idx),
                _ => self
                    .tops
                    .extend(ranges.iter().map(|&(lo, hi)| (lo, hi, idx))),
            }
            self.walk(dwarf, unit, child, Some(idx), depth + 1)?;
        }
        Ok(())
    }

    /// The inline chain of a virtual address.
    pub fn lookup(&self, addr: u64) -> Lookup {
        let Some(top) = self.top_at(addr) else {
            return Lookup::NoFunction;
        };
        let mut chain = vec![top];
        loop {
            let last = &self.nodes[*chain.last().unwrap_or(&top)];
            let next = last.children.iter().copied().find(|&c| {
                self.nodes[c]
                    .ranges
                    .iter()
                    .any(|&(lo, hi)| lo <= addr && addr < hi)
            });
            match next {
                Some(c) if chain.len() < 64 => chain.push(c),
                _ => break,
            }
        }
        let Some((line, disc)) = self.line_at(addr) else {
            return Lookup::NoLine;
        };
        if line == 0 {
            return Lookup::LineZero;
        }
        let mut out = Vec::with_capacity(chain.len());
        for (i, &n) in chain.iter().enumerate() {
            let node = &self.nodes[n];
            let (line, discriminator) = match chain.get(i + 1) {
                Some(&c) => (self.nodes[c].call_line, self.nodes[c].call_disc),
                None => (line, disc),
            };
            out.push(Loc {
                function: node.name.clone().unwrap_or_default(),
                start_line: node.decl_line,
                line,
                discriminator: base_discriminator(discriminator),
            });
        }
        // An inlined function whose name DWARF gives elsewhere (another unit, as LTO writes)
        // ends the chain: its samples stay with its caller, at the line of the call.
        if let Some(cut) = chain
            .iter()
            .skip(1)
            .position(|&n| self.nodes[n].name.is_none())
        {
            out.truncate(cut + 1);
        }
        if out.iter().any(|l| l.start_line == 0) {
            return Lookup::NoStartLine;
        }
        Lookup::Found(out)
    }

    fn top_at(&self, addr: u64) -> Option<usize> {
        let end = self.tops.partition_point(|r| r.0 <= addr);
        // Ranges of distinct functions do not overlap; look back a little for safety.
        self.tops[..end]
            .iter()
            .rev()
            .take(4)
            .find(|r| addr < r.1)
            .map(|r| r.2)
    }

    fn line_at(&self, addr: u64) -> Option<(u32, u32)> {
        let end = self.sequences.partition_point(|s| s.start <= addr);
        let seq = self.sequences[..end].iter().rev().find(|s| addr < s.end)?;
        let i = seq.rows.partition_point(|r| r.0 <= addr);
        let row = seq.rows.get(i.checked_sub(1)?)?;
        Some((row.1, row.2))
    }
}

/// The name (linkage name first, as the compiler names the function in its IR) and start line
/// of a function, through its abstract origin or specification.
fn describe<'d>(
    dwarf: &gimli::Dwarf<R<'d>>,
    unit: &gimli::Unit<R<'d>>,
    entry: &gimli::DebuggingInformationEntry<R<'d>>,
) -> (Option<String>, u32) {
    let string = |v: AttributeValue<R<'d>>| {
        dwarf
            .attr_string(unit, v)
            .ok()
            .map(|s| String::from_utf8_lossy(s.slice()).into_owned())
    };
    let (mut linkage, mut name, mut decl) = (None, None, None);
    let mut cur = entry.clone();
    for _ in 0..8 {
        if linkage.is_none() {
            linkage = cur
                .attr_value(gimli::DW_AT_linkage_name)
                .or_else(|| cur.attr_value(gimli::DW_AT_MIPS_linkage_name))
                .and_then(string);
        }
        if name.is_none() {
            name = cur.attr_value(gimli::DW_AT_name).and_then(string);
        }
        if decl.is_none() {
            decl = cur
                .attr_value(gimli::DW_AT_decl_line)
                .and_then(|v| v.udata_value());
        }
        let next = cur
            .attr_value(gimli::DW_AT_abstract_origin)
            .or_else(|| cur.attr_value(gimli::DW_AT_specification));
        match next {
            Some(AttributeValue::UnitRef(off)) => match unit.entry(off) {
                Ok(e) => cur = e,
                Err(_) => break,
            },
            _ => break,
        }
    }
    (linkage.or(name), decl.unwrap_or(0) as u32)
}

/// The base discriminator of a line-table discriminator, as LLVM encodes it (the low bits, in
/// its prefix encoding; the rest carries duplication factors and copy ids). A sample profile
/// keys body lines by the base discriminator only.
pub fn base_discriminator(d: u32) -> u32 {
    if d & 1 != 0 {
        return 0;
    }
    let u = d >> 1;
    if u & (1 << 5) != 0 {
        ((u >> 1) & 0xfe0) | (u & 0x1f)
    } else {
        u & 0x1f
    }
}

#[cfg(test)]
mod tests {
    use super::base_discriminator;

    #[test]
    fn base_discriminators_follow_llvms_prefix_encoding() {
        assert_eq!(base_discriminator(0), 0);
        // An odd value carries no base discriminator.
        assert_eq!(base_discriminator(3), 0);
        // Small ones: the value shifted left by one.
        assert_eq!(base_discriminator(2), 1);
        assert_eq!(base_discriminator(6), 3);
        assert_eq!(base_discriminator(62), 31);
        // Larger ones set bit 6 and spread over the next bits.
        assert_eq!(
            base_discriminator((1 << 6) | (2 << 7) | (5 << 1)),
            (2 << 5) | 5
        );
    }
}
