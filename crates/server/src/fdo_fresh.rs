//! FDO profiles kept fresh for the services whose continuous cpu rule asks (`fdo = "24h"`):
//! every `fdo_every`, the service's most sampled binaries get their sample and BOLT profiles
//! rewritten under `DIR/SERVICE/BUILD_ID.{afdo.txt,fdata,json}`, which the API lists and serves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_model::sync;
use baton_model::time::now_ms;
use baton_store::{Filter, Query};
use baton_symbolizer::fdo::{find_binary, FdoBinary, SampleProfile, Samples};
use serde::{Deserialize, Serialize};

use crate::AppState;

/// A binary is kept when its code holds at least this share of the service's CPU samples.
const MIN_SHARE: f64 = 0.05;
/// At most this many binaries per service.
const MAX_BINARIES: usize = 3;

/// What is written beside each profile, and what `GET /api/v1/fdo/profiles` lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreshProfile {
    pub service: String,
    pub build_id: String,
    pub binary: String,
    pub updated_ms: i64,
    pub window_s: u64,
    /// Microseconds of CPU sampled in the binary, and how much of it mapped to source.
    pub samples_us: f64,
    pub mapped_us: f64,
    pub functions: usize,
    /// Paths of the files under `/api/v1/fdo/profiles/`.
    pub llvm: String,
    pub bolt: String,
}

/// Starts the thread that keeps the profiles fresh; it checks the live config every second
/// and rewrites a service's profiles when its rule's `fdo_every` has passed.
pub fn spawn(state: AppState, dir: PathBuf, stop: fn() -> bool) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("baton-fdo".into())
        .spawn(move || {
            let mut last: std::collections::HashMap<String, Instant> = Default::default();
            while !stop() {
                std::thread::sleep(Duration::from_secs(1));
                let Some(cfg) = state.live_config() else {
                    continue;
                };
                for (name, svc) in &cfg.services {
                    let Some(f) = svc.continuous.iter().find_map(|r| r.fdo.clone()) else {
                        continue;
                    };
                    let due = last.get(name).is_none_or(|t| t.elapsed() >= f.every);
                    if !due {
                        continue;
                    }
                    last.insert(name.clone(), Instant::now());
                    match refresh(&state, &dir, name, f.window) {
                        Ok(written) if !written.is_empty() => eprintln!(
                            "baton: fdo: service {name}: refreshed {}",
                            written
                                .iter()
                                .map(|p| format!("{} ({})", p.build_id, p.binary))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(service = %name, error = %e, "fdo refresh failed"),
                    }
                }
            }
        })?;
    Ok(())
}

/// Rewrites one service's profiles from the last `window` of its samples.
pub fn refresh(
    state: &AppState,
    dir: &Path,
    service: &str,
    window: Duration,
) -> Result<Vec<FreshProfile>, String> {
    if !safe_name(service) {
        return Err(format!(
            "service {service:?}: FDO profiles are kept only for services named with \
             letters, digits, '-', '_' and '.'"
        ));
    }
    let to_ms = now_ms();
    let q = Query {
        profiler: "cpu".into(),
        value: None,
        from_ms: to_ms - window.as_millis() as i64,
        to_ms: to_ms + 1,
        filters: vec![Filter::parse(&format!("service={service}")).map_err(|e| e.to_string())?],
        // An FDO profile needs every frame where it ran: no Stack Schema.
        schema: None,
    };
    let profile = sync::lock(&state.store)
        .profile(&q)
        .map_err(|e| e.to_string())?;
    let ids = Samples::build_ids(&profile.samples);
    let total: f64 = ids.iter().map(|i| i.2).sum();
    let out_dir = dir.join(service);
    let mut written = Vec::new();
    for (build_id, module, w) in ids.into_iter().take(MAX_BINARIES) {
        if total <= 0.0 || w / total < MIN_SHARE {
            break;
        }
        let known = state.debuginfo.as_ref().and_then(|d| d.local(&build_id));
        let local = state.fleet.is_none();
        let Some(path) = find_binary(&profile.samples, &build_id, known, local) else {
            tracing::debug!(%build_id, %module, "no binary for an fdo profile here");
            continue;
        };
        let bin = match FdoBinary::open_for(&path, Some(&build_id)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%build_id, error = %e, "fdo: skipping a binary");
                continue;
            }
        };
        let samples = Samples::from_profile(&profile, &build_id);
        let (prof, cov) = SampleProfile::build(&bin, &samples);
        if prof.functions.is_empty() {
            continue;
        }
        std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
        let mut text = Vec::new();
        prof.write_text(&mut text).map_err(|e| e.to_string())?;
        let llvm = format!("{service}/{build_id}.afdo.txt");
        let bolt = format!("{service}/{build_id}.fdata");
        write_atomic(&dir.join(&llvm), &text)?;
        write_atomic(
            &dir.join(&bolt),
            bin.bolt_profile(&samples, "cpu-clock").as_bytes(),
        )?;
        let meta = FreshProfile {
            service: service.to_string(),
            build_id: build_id.clone(),
            binary: path.display().to_string(),
            updated_ms: to_ms,
            window_s: window.as_secs(),
            samples_us: cov.samples,
            mapped_us: cov.mapped,
            functions: prof.functions.len(),
            llvm,
            bolt,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
        write_atomic(&out_dir.join(format!("{build_id}.json")), &json)?;
        written.push(meta);
    }
    Ok(written)
}

/// Whether a service or file name can be a directory entry here and a URL path segment: letters,
/// digits, `-`, `_` and `.`, not leading with a dot.
pub(crate) fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Every fresh profile under `dir`, newest first.
pub fn list(dir: &Path) -> Vec<FreshProfile> {
    let mut out = Vec::new();
    for svc in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(svc.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "json") {
                if let Some(m) = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<FreshProfile>(&b).ok())
                {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.updated_ms));
    out
}
