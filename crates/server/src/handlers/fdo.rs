//! `GET /api/v1/fdo`: the CPU samples of one build ID over a range, weighted and across every
//! host, as raw samples (for `baton fdo`), or as an LLVM sample profile or a BOLT profile built
//! here against the binary (from the debug-info store, or a module path of this host whose build
//! ID matches).

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::FrameKind;
use baton_symbolizer::fdo::{FdoBinary, SampleProfile, Samples};

use crate::error::ApiError;
use crate::state::with_store;
use crate::AppState;

enum Output {
    Samples,
    Llvm,
    Bolt,
}

/// `build_id` (required), `format=samples|llvm|bolt` (default samples), and the common query
/// parameters (`since` or `from`/`to`, `filter=service=NAME`…); the profiler is `cpu`.
pub(crate) async fn fdo(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let raw = q.unwrap_or_default();
    let (mut build_id, mut output, mut rest) = (None, Output::Samples, Vec::new());
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "build_id" => build_id = Some(v.to_ascii_lowercase()),
            "format" => {
                output = match v.as_ref() {
                    "samples" => Output::Samples,
                    "llvm" => Output::Llvm,
                    "bolt" => Output::Bolt,
                    o => {
                        return Err(ApiError::bad_request(format!(
                            "format: unknown {o:?}; use samples, llvm or bolt"
                        )))
                    }
                }
            }
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    let rest = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(rest)
        .finish();
    let mut p = st.params(Some(&rest))?;
    if p.query.profiler != "cpu" {
        return Err(ApiError::bad_request(
            "FDO profiles are built from the cpu profiler's samples",
        ));
    }
    p.query.value = None;
    let query = p.query.clone();
    let profile = with_store(&st, move |s| s.profile(&query)).await?;
    let Some(build_id) = build_id.filter(|b| !b.is_empty()) else {
        let ids: Vec<String> = Samples::build_ids(&profile.samples)
            .into_iter()
            .take(10)
            .map(|(b, m, _)| format!("{b} ({m})"))
            .collect();
        return Err(ApiError::bad_request(format!(
            "build_id is required; the most sampled in this range: {}",
            if ids.is_empty() {
                "none".into()
            } else {
                ids.join(", ")
            }
        )));
    };
    let samples = Samples::from_profile(&profile, &build_id);
    if samples.stacks.is_empty() {
        return Err(ApiError::not_found(format!(
            "no CPU samples of build ID {build_id} in this range"
        )));
    }
    let ext = match output {
        Output::Samples => return Ok(Json(samples).into_response()),
        Output::Llvm => "afdo.txt",
        Output::Bolt => "fdata",
    };
    let Some(path) = binary_for(&st, &profile, &build_id) else {
        return Err(ApiError::not_found(format!(
            "no binary with build ID {build_id} here (neither uploaded debug info nor a local \
             file); fetch format=samples and run `baton fdo --binary` where the binary is"
        )));
    };
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let bin = FdoBinary::open_for(&path, Some(&build_id)).map_err(|e| e.to_string())?;
        Ok(match output {
            Output::Bolt => bin.bolt_profile(&samples, "cpu-clock").into_bytes(),
            _ => {
                let (prof, _) = SampleProfile::build(&bin, &samples);
                let mut out = Vec::new();
                prof.write_text(&mut out).map_err(|e| e.to_string())?;
                out
            }
        })
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"baton-fdo.{ext}\""),
            ),
        ],
        Body::from(body),
    )
        .into_response())
}

/// The binary of a build ID: uploaded debug info first, else a module path of the samples that
/// is a file of this host with that build ID.
fn binary_for(st: &AppState, profile: &baton_model::Profile, build_id: &str) -> Option<PathBuf> {
    if let Some(p) = st.debuginfo.as_ref().and_then(|d| d.local(build_id)) {
        return Some(p);
    }
    let mut seen = std::collections::HashSet::new();
    for s in &profile.samples {
        for f in &s.stack {
            if f.kind == FrameKind::User
                && f.build_id.as_deref() == Some(build_id)
                && seen.insert(f.module.clone())
            {
                let p = PathBuf::from(&f.module);
                if baton_symbolizer::build_id_of(&p).as_deref() == Some(build_id) {
                    return Some(p);
                }
            }
        }
    }
    None
}
