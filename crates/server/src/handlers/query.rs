//! The queries over the store: flame graphs, top functions, time series, histograms, the
//! thread timeline, label values and exports. Each reads the common parameters (`profiler`,
//! `since` or `from`/`to`, `filter`…) and answers one of the shapes of [`crate::api`].

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_model::export::{self, Format};
use baton_store::{FilterOp, Point, TimelineQuery};

use crate::api::{
    HistogramSummary, Histograms, LabelValue, LabelValues, TimelineBody, Timeseries, Top,
};
use crate::error::ApiError;
use crate::flame::{self, FlameShape};
use crate::state::with_store;
use crate::AppState;

/// The default and largest number of spans of a timeline call.
const TIMELINE_SPANS: usize = 20_000;
const TIMELINE_MAX_SPANS: usize = 200_000;

/// `GET /api/v1/flamegraph`: `shape=tree` (default), `flat` or `flatbin`, see [`flame`].
pub(crate) async fn flamegraph(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = st.params(q.as_deref())?;
    let shape = FlameShape::from_query(q.as_deref().unwrap_or(""));
    let query = p.query.clone();
    let t0 = std::time::Instant::now();
    let named = with_store(&st, move |s| s.named_stacks(&query)).await?;
    tracing::debug!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        stacks = named.stacks.len(),
        "stacks named"
    );
    Ok(flame::encode(&named, &p, shape, flame::gzip_ok(&headers)))
}

/// `GET /api/v1/top`: the `limit` heaviest functions.
pub(crate) async fn top(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Top>, ApiError> {
    let p = st.params(q.as_deref())?;
    let query = p.query.clone();
    let named = with_store(&st, move |s| s.named_stacks(&query)).await?;
    let mut rows = named.top_functions();
    rows.truncate(p.limit);
    Ok(Json(Top {
        unit: named
            .value_type
            .as_ref()
            .map_or_else(|| "nanoseconds".into(), |v| v.unit.clone()),
        total: named.total(),
        rows,
    }))
}

/// `GET /api/v1/timeline`: spans in the range. `filter=pid=N` and `filter=host=H` choose the
/// process (no other filters apply), `limit` caps the spans (default 20,000, at most 200,000).
pub(crate) async fn timeline(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<TimelineBody>, ApiError> {
    let raw = q.as_deref().unwrap_or("");
    let p = st.params(q.as_deref())?;
    let mut tq = TimelineQuery {
        from_ms: p.query.from_ms,
        to_ms: p.query.to_ms,
        host: None,
        pid: None,
        limit: if raw.split('&').any(|kv| kv.starts_with("limit=")) {
            p.limit.min(TIMELINE_MAX_SPANS)
        } else {
            TIMELINE_SPANS
        },
    };
    for f in &p.query.filters {
        match (f.label.as_str(), f.op) {
            ("pid", FilterOp::Eq) => {
                let pid = f.value.parse();
                tq.pid =
                    Some(pid.map_err(|_| ApiError::bad_request(format!("pid {:?}", f.value)))?);
            }
            ("host", FilterOp::Eq) => tq.host = Some(f.value.clone()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "the timeline takes filter=pid=N and filter=host=H only, not {}",
                    f.label
                )))
            }
        }
    }
    let (from_ms, to_ms) = (tq.from_ms, tq.to_ms);
    let timeline = with_store(&st, move |s| s.timeline(&tq)).await?;
    Ok(Json(TimelineBody {
        from_ms,
        to_ms,
        timeline,
    }))
}

/// `GET /api/v1/histograms`: a profiler's histograms in the range, merged per (name, key),
/// with p50/p90/p99.
pub(crate) async fn histograms(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Histograms>, ApiError> {
    let p = st.params(q.as_deref())?;
    let query = p.query.clone();
    let hs = with_store(&st, move |s| s.histograms(&query)).await?;
    let histograms = hs
        .into_iter()
        .map(|h| HistogramSummary {
            count: h.total(),
            p50: h.quantile(0.5),
            p90: h.quantile(0.9),
            p99: h.quantile(0.99),
            name: h.name,
            unit: h.unit,
            key: h.key,
            buckets: h.buckets,
        })
        .collect();
    Ok(Json(Histograms {
        profiler: p.query.profiler,
        from_ms: p.query.from_ms,
        to_ms: p.query.to_ms,
        histograms,
    }))
}

/// `GET /api/v1/timeseries`: weighted totals per `step`; with `group_by=LABEL`, one series per
/// value of the label too.
pub(crate) async fn timeseries(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Timeseries>, ApiError> {
    let p = st.params(q.as_deref())?;
    let query = p.query.clone();
    let step_ms = p.step_ms;
    let group_by = p.group_by.clone();
    let series = with_store(&st, move |s| s.series(&query, step_ms, group_by.as_deref())).await?;
    let mut sum: BTreeMap<i64, f64> = BTreeMap::new();
    for pt in series.iter().flat_map(|s| &s.points) {
        *sum.entry(pt.ts_ms).or_default() += pt.value;
    }
    Ok(Json(Timeseries {
        from_ms: p.query.from_ms,
        to_ms: p.query.to_ms,
        step_ms,
        level: p.query.value.as_deref().is_some_and(baton_store::is_level),
        points: sum
            .into_iter()
            .map(|(ts_ms, value)| Point { ts_ms, value })
            .collect(),
        series: if p.group_by.is_some() {
            series
        } else {
            Vec::new()
        },
        group_by: p.group_by,
    }))
}

/// `GET /api/v1/export`: the profile as a file, `format=pprof` (default) or another.
pub(crate) async fn export_profile(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = st.params(q.as_deref())?;
    let format = p.format.unwrap_or(Format::Pprof);
    let query = p.query.clone();
    let profile = with_store(&st, move |s| s.profile(&query)).await?;
    let mut buf = Vec::new();
    export::write(&profile, format, &mut buf).map_err(ApiError::internal)?;
    let (ctype, ext) = match format {
        Format::Pprof => ("application/octet-stream", "pb.gz"),
        Format::Collapsed => ("text/plain; charset=utf-8", "folded"),
        Format::Speedscope => ("application/json", "speedscope.json"),
        Format::Svg => ("image/svg+xml", "svg"),
        Format::Json => ("application/json", "json"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"baton-{}.{ext}\"", p.query.profiler),
            ),
        ],
        Body::from(buf),
    )
        .into_response())
}

/// `GET /api/v1/labels/{label}`: the label's values in the range, most weighted first.
pub(crate) async fn labels(
    State(st): State<AppState>,
    Path(label): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<LabelValues>, ApiError> {
    let p = st.params(q.as_deref())?;
    let query = p.query.clone();
    let limit = p.limit;
    let values = with_store(&st, move |s| s.label_values(&query, &label, limit)).await?;
    Ok(Json(LabelValues {
        values: values
            .into_iter()
            .map(|(value, total)| LabelValue { value, total })
            .collect(),
    }))
}

/// `POST /api/v1/schema/check`: per Stack Schema rule of the body, the stacks of the range with
/// a frame it matches and their share (`baton config check --server` shows them).
pub(crate) async fn schema_check(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    Json(body): Json<crate::api::SchemaCheckRequest>,
) -> Result<Json<crate::api::SchemaCheck>, ApiError> {
    let p = st.params(q.as_deref())?;
    let mut query = p.query.clone();
    query.schema = None;
    let rules = body
        .rules
        .iter()
        .map(baton_model::SchemaRule::from_spec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError(axum::http::StatusCode::BAD_REQUEST, e))?;
    let schema = baton_model::StackSchema { rules };
    let profiler = query.profiler.clone();
    let (total, matches, schema) = with_store(&st, move |s| {
        let (total, m) = s.schema_matches(&query, &schema)?;
        Ok((total, m, schema))
    })
    .await?;
    Ok(Json(crate::api::SchemaCheck {
        profiler,
        total,
        rules: schema
            .rules
            .iter()
            .zip(matches)
            .map(|(r, m)| crate::api::SchemaRuleMatch {
                rule: r.describe(),
                stacks: m.stacks,
                total: m.total,
                share: if total > 0.0 {
                    100.0 * m.total / total
                } else {
                    0.0
                },
            })
            .collect(),
    }))
}
