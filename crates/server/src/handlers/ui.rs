//! The UI: one shell page for every route of the app, its JavaScript modules (shipped inside
//! the binary: no CDN, no build step), and who the caller is.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::WhoAmI;
use crate::auth::{Principal, Role};
use crate::AppState;

const INDEX_HTML: &str = include_str!("../../../../web/index.html");

/// The UI's modules.
const ASSETS: &[(&str, &str)] = &[
    ("app.js", include_str!("../../../../web/app.js")),
    ("flame.js", include_str!("../../../../web/flame.js")),
    ("timeline.js", include_str!("../../../../web/timeline.js")),
    ("pages.js", include_str!("../../../../web/pages.js")),
];

/// The app's pages, each served the shell (the app routes on the client).
pub(crate) const PAGES: &[&str] = &[
    "/",
    "/explore",
    "/compare",
    "/timeline",
    "/runs",
    "/fleet",
    "/config",
];

pub(crate) async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /assets/{name}`
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((_, body)) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// `GET /api/v1/whoami`: who the caller is and what the UI should offer them.
pub(crate) async fn whoami(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Json<WhoAmI> {
    Json(WhoAmI {
        role: who.role.name(),
        can_run: who.role >= Role::Operator && (st.runs.is_some() || st.fleet.is_some()),
        can_force: who.role >= Role::Admin,
        fleet: st.fleet.is_some(),
        name: who.name,
    })
}
