//! `baton symbolize`: the server's symbolizer, offline, on one ELF file.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use baton_symbolizer::{ElfSymbolizer, SymInfo};
use serde_json::json;

use crate::common::usage;
use crate::SymbolizeArgs;

fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse::<u64>(),
    };
    r.map_err(|_| format!("{t:?} is not an address (use 0x… hex or decimal)"))
}

pub fn run(a: SymbolizeArgs) -> anyhow::Result<ExitCode> {
    let json_out = match a.format.as_str() {
        "text" => false,
        "json" => true,
        f => return Err(usage(format!("unknown --format {f:?}; use text or json"))),
    };
    if !a.elf.is_file() {
        return Err(usage(format!("{}: no such file", a.elf.display())));
    }
    let mut addrs = Vec::new();
    for s in &a.addrs {
        addrs.push(parse_addr(s).map_err(usage)?);
    }
    if let Some(input) = &a.input {
        let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(input)
                    .map_err(|e| usage(format!("{}: {e}", input.display())))?,
            ))
        };
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            for word in line.split_whitespace() {
                addrs.push(
                    parse_addr(word)
                        .map_err(|e| usage(format!("{}:{}: {e}", input.display(), n + 1)))?,
                );
            }
        }
    }
    if addrs.is_empty() {
        return Err(usage(
            "no addresses: give them as arguments or with --input FILE",
        ));
    }
    let sym = ElfSymbolizer::default();
    let mut results = Vec::new();
    for pass in 0..a.passes.max(1) {
        let t = Instant::now();
        results = if a.file_offsets {
            sym.file_offsets(&a.elf, &addrs)
        } else {
            sym.virtual_addrs(&a.elf, &addrs)
        };
        if a.passes > 1 {
            eprintln!(
                "pass {} ({}): {} addresses in {:.3}s",
                pass + 1,
                if pass == 0 { "cold" } else { "warm" },
                addrs.len(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let found = results.iter().filter(|r| r.is_some()).count();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json_out {
        let list: Vec<_> = addrs
            .iter()
            .zip(&results)
            .map(
                |(a, r)| json!({ "address": format!("{a:#x}"), "frames": frames_json(r.as_ref()) }),
            )
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "elf": a.elf.display().to_string(), "addresses": list })
        )?;
    } else {
        for (addr, r) in addrs.iter().zip(&results) {
            match r {
                None => writeln!(out, "{addr:#x}: ??")?,
                Some(s) => {
                    // Innermost first, as addr2line -i prints them.
                    let frames = frames_of(s);
                    for (i, (name, file, line)) in frames.iter().enumerate() {
                        let at = match (file, line) {
                            (Some(f), Some(l)) => format!(" at {f}:{l}"),
                            (Some(f), None) => format!(" at {f}"),
                            _ => String::new(),
                        };
                        if i == 0 {
                            writeln!(out, "{addr:#x}: {name}{at}")?;
                        } else {
                            writeln!(out, " (inlined by) {name}{at}")?;
                        }
                    }
                }
            }
        }
    }
    out.flush()?;
    Ok(if found == 0 {
        eprintln!(
            "no address resolved: are they virtual addresses of this file (see --file-offsets)?"
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The frames of one address, innermost first: the inlined functions, then the one they were
/// inlined into. Each inlined function's location is where it is; the caller's line is the
/// call site of the next-inner function.
fn frames_of(s: &SymInfo) -> Vec<(String, Option<String>, Option<u32>)> {
    let mut out: Vec<(String, Option<String>, Option<u32>)> =
        s.inlined.iter().rev().cloned().collect();
    out.push((s.function.clone(), s.file.clone(), s.line));
    out
}

fn frames_json(r: Option<&SymInfo>) -> serde_json::Value {
    let Some(s) = r else {
        return json!([]);
    };
    let frames = frames_of(s);
    let n = frames.len();
    json!(frames
        .into_iter()
        .enumerate()
        .map(|(i, (f, file, line))| json!({ "function": f, "file": file, "line": line, "inlined": i + 1 < n }))
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_parse_in_hex_and_decimal() {
        assert_eq!(super::parse_addr("0x10"), Ok(16));
        assert_eq!(super::parse_addr("16"), Ok(16));
        assert!(super::parse_addr("zz").is_err());
    }
}
