//! The handlers of the local API, by concern: the UI's pages and assets, the queries over the
//! store, and what the server says of itself. The runs, fleet and ingest handlers live with
//! their state (`runs`, `fleet`, `ingest`).

pub(crate) mod fdo;
pub(crate) mod info;
pub(crate) mod query;
pub(crate) mod ui;
