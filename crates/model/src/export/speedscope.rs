//! speedscope's file format: one "sampled" profile with shared frames and weights.

use std::collections::HashMap;
use std::io::{self, Write};

use serde_json::json;

use crate::profile::Profile;

pub fn write(profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
    let mut frames: Vec<serde_json::Value> = Vec::new();
    // A frame is its name, file and line: an interpreted function's lines are frames of their
    // own, as in speedscope's own importers.
    let mut index: HashMap<(String, Option<String>, Option<u32>), usize> = HashMap::new();
    let mut samples: Vec<Vec<usize>> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    for s in profile.samples.iter().filter(|s| s.value_index == 0) {
        let w = s.weighted();
        if w == 0.0 {
            continue;
        }
        let mut ids = Vec::with_capacity(s.stack.len());
        for f in s.stack.iter().rev() {
            let name = f.display_name();
            let key = (name, f.file.clone(), f.line);
            let id = match index.get(&key) {
                Some(&i) => i,
                None => {
                    let mut fr = json!({ "name": key.0.clone() });
                    if let Some(file) = &f.file {
                        fr["file"] = json!(file);
                    }
                    if let Some(line) = f.line {
                        fr["line"] = json!(line);
                    }
                    frames.push(fr);
                    index.insert(key, frames.len() - 1);
                    frames.len() - 1
                }
            };
            ids.push(id);
        }
        samples.push(ids);
        weights.push(w);
    }
    let total: f64 = weights.iter().sum();
    let doc = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": "baton",
        "name": "baton profile",
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": [{
            "type": "sampled",
            "name": profile.event.clone().unwrap_or_else(|| profile.value_type.kind.clone()),
            "unit": profile.value_type.unit,
            "startValue": 0,
            "endValue": total,
            "samples": samples,
            "weights": weights,
        }],
    });
    serde_json::to_writer(&mut *out, &doc)?;
    out.write_all(b"\n")
}
