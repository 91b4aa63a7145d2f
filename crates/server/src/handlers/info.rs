//! What the server says of itself: its status and the config in force.

use axum::extract::State;
use axum::Json;
use baton_model::sync::read;

use crate::api::{ConfigView, StatusBody};
use crate::error::ApiError;
use crate::state::with_store;
use crate::AppState;

/// `GET /api/v1/status`: what this process is, how its profiling stands (the driver keeps it
/// up to date), and the store's row count.
pub(crate) async fn status(State(st): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    let rows = with_store(&st, |s| s.sample_rows()).await?;
    Ok(Json(StatusBody {
        facts: st.facts.as_ref().clone(),
        profiling: read(&st.profiling).clone(),
        sample_rows: rows,
        trace_url: st
            .config
            .as_ref()
            .and_then(|l| read(l).config.as_ref()?.trace_url.clone()),
    }))
}

/// `GET /api/v1/config`
pub(crate) async fn config(State(st): State<AppState>) -> Result<Json<ConfigView>, ApiError> {
    let Some(live) = &st.config else {
        return Err(ApiError::not_found(
            "no config directory is in use; start baton up with --config DIR",
        ));
    };
    let live = read(live).clone();
    Ok(Json(ConfigView {
        version: live.config.as_ref().map(|c| c.version.clone()),
        dir: live.dir,
        loaded_at_ms: live.loaded_at_ms,
        reloads: live.reloads,
        rejected: live.rejected,
        last_errors: live.last_errors,
        config: live.config,
    }))
}
