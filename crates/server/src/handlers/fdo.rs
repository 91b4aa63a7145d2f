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
    let body = tokio::task::spawn_blocking(move || -> Result<Result<Vec<u8>, String>, String> {
        let bin = FdoBinary::open_for(&path, Some(&build_id)).map_err(|e| e.to_string())?;
        let (prof, cov) = SampleProfile::build(&bin, &samples);
        if prof.functions.is_empty() {
            return Ok(Err(format!(
                "none of the {:.0} µs sampled in {} maps to a function with source lines \
                 (no line table: {:.0}, line 0: {:.0}, no start line: {:.0}, outside every \
                 function: {:.0})",
                cov.samples,
                path.display(),
                cov.no_line_table,
                cov.line_zero,
                cov.no_start_line,
                cov.outside_functions
            )));
        }
        Ok(Ok(match output {
            Output::Bolt => bin.bolt_profile(&samples, "cpu-clock").into_bytes(),
            _ => {
                let mut out = Vec::new();
                prof.write_text(&mut out).map_err(|e| e.to_string())?;
                out
            }
        }))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?
    .map_err(ApiError::not_found)?;
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

fn binary_for(st: &AppState, profile: &baton_model::Profile, build_id: &str) -> Option<PathBuf> {
    let known = st.debuginfo.as_ref().and_then(|d| d.local(build_id));
    // A fleet server's samples name paths of other hosts: only its debug-info store counts.
    baton_symbolizer::fdo::find_binary(&profile.samples, build_id, known, st.fleet.is_none())
}

/// `GET /api/v1/fdo/profiles`: the profiles kept fresh for services, newest first.
pub(crate) async fn profiles(
    State(st): State<AppState>,
) -> Json<Vec<crate::fdo_fresh::FreshProfile>> {
    Json(
        st.fdo_dir
            .as_deref()
            .map(crate::fdo_fresh::list)
            .unwrap_or_default(),
    )
}

/// `GET /api/v1/fdo/profiles/{service}/{file}`: one of them.
pub(crate) async fn profile_file(
    State(st): State<AppState>,
    axum::extract::Path((service, file)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    use crate::fdo_fresh::safe_name;
    let (Some(dir), true) = (&st.fdo_dir, safe_name(&service) && safe_name(&file)) else {
        return Err(ApiError::not_found("no such FDO profile"));
    };
    let bytes = std::fs::read(dir.join(&service).join(&file))
        .map_err(|_| ApiError::not_found(format!("no FDO profile {service}/{file}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// One binary of `GET /api/v1/fdo/binaries`.
#[derive(serde::Serialize)]
pub(crate) struct Binary {
    build_id: String,
    module: String,
    /// Its share of the selection's CPU samples whose leaf is user code.
    share: f64,
}

/// `GET /api/v1/fdo/binaries`: the binaries the selection's CPU samples are in, most first
/// (what `/api/v1/fdo` can build a profile of).
pub(crate) async fn binaries(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<Binary>>, ApiError> {
    let mut p = st.params(q.as_deref())?;
    if p.query.profiler != "cpu" {
        return Ok(Json(Vec::new()));
    }
    p.query.value = None;
    let query = p.query.clone();
    let profile = with_store(&st, move |s| s.profile(&query)).await?;
    let ids = Samples::build_ids(&profile.samples);
    let total: f64 = ids.iter().map(|i| i.2).sum();
    Ok(Json(
        ids.into_iter()
            .take(p.limit.min(20))
            .map(|(build_id, module, w)| Binary {
                build_id,
                module,
                share: if total > 0.0 { w / total } else { 0.0 },
            })
            .collect(),
    ))
}
