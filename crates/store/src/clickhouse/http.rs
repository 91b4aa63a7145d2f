//! ClickHouse's HTTP interface: statements, selects as TSV rows, inserts (counted for
//! `/metrics`), and the names of the tables they read and write.

use std::time::Duration;

use super::tsv;
use super::url::ClickHouseUrl;
use crate::StoreError;

/// Statistics of the insert path, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClickHouseStats {
    pub inserts: u64,
    pub insert_errors: u64,
    pub rows_inserted: u64,
}

/// A client of one ClickHouse server (or the node of a cluster that Baton talks to).
pub(super) struct Http {
    pub url: ClickHouseUrl,
    agent: ureq::Agent,
    pub stats: ClickHouseStats,
    /// Rows of `symbols` at the last read, to see symbols that another server added.
    pub symbol_rows: Option<i64>,
}

/// An error of the HTTP interface.
pub(super) fn ch_err(msg: impl Into<String>) -> StoreError {
    StoreError::ClickHouse(msg.into())
}

impl Http {
    pub(super) fn new(url: ClickHouseUrl) -> Http {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Http {
            url,
            agent,
            stats: ClickHouseStats::default(),
            symbol_rows: None,
        }
    }

    pub(super) fn db(&self) -> &str {
        &self.url.database
    }

    /// DDL runs on the node Baton talks to only: `ON CLUSTER` needs ZooKeeper, which a plain
    /// two-shard setup does not have. Each shard's local tables are made by opening it once
    /// without `cluster` (see the README's cluster setup).
    pub(super) fn on_cluster(&self) -> String {
        String::new()
    }

    /// Runs a statement (or sends `body` after an `INSERT … FORMAT TabSeparated`).
    fn post(&self, sql: &str, body: &str) -> Result<String, StoreError> {
        // Every statement names its tables with the database; the database parameter is only
        // the default, and cannot be given before the database exists.
        let mut params: Vec<String> = Vec::new();
        if !sql.starts_with("CREATE DATABASE") {
            params.push(format!("database={}", self.url.database));
        }
        if self.url.cluster.is_some() {
            // An insert through a Distributed table returns once every shard has its rows.
            params.push("insert_distributed_sync=1".into());
        }
        let mut url = format!("{}/?{}", self.url.base, params.join("&"));
        let payload: &str = if body.is_empty() {
            sql
        } else {
            url.push_str(if params.is_empty() {
                "query="
            } else {
                "&query="
            });
            url.push_str(&form_urlencode(sql));
            body
        };
        let mut req = self.agent.post(&url);
        if let Some(u) = &self.url.user {
            req = req.header("X-ClickHouse-User", u);
        }
        if let Some(p) = &self.url.password {
            req = req.header("X-ClickHouse-Key", p);
        }
        let mut resp = req
            .send(payload.as_bytes())
            .map_err(|e| ch_err(format!("{}: {e}", self.url.base)))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 31)
            .read_to_string()
            .map_err(|e| ch_err(format!("{}: reading the answer: {e}", self.url.base)))?;
        if !(200..300).contains(&status) {
            let first = text.lines().next().unwrap_or("").trim();
            return Err(ch_err(format!(
                "{} answered {status}: {first}",
                self.url.base
            )));
        }
        Ok(text)
    }

    pub(super) fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.post(sql, "").map(|_| ())
    }

    /// Rows of a SELECT, as TSV fields.
    pub(super) fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        Ok(tsv::parse(
            &self.post(&format!("{sql} FORMAT TabSeparated"), "")?,
        ))
    }

    /// Rows of a two-column SELECT, parsed; rows that do not parse are left out.
    pub(super) fn pairs<A: std::str::FromStr, B: std::str::FromStr>(
        &self,
        sql: &str,
    ) -> Result<Vec<(A, B)>, StoreError> {
        Ok(self
            .rows(sql)?
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.first()?.as_ref()?.parse().ok()?,
                    r.get(1)?.as_ref()?.parse().ok()?,
                ))
            })
            .collect())
    }

    /// The first value of a query's answer, as a number (0 when there is none).
    pub(super) fn number(&self, sql: &str) -> Result<i64, StoreError> {
        Ok(self
            .rows(sql)?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Inserts `rows` TSV rows into `table` (of this database), counted in the stats.
    pub(super) fn insert(&mut self, table: &str, tsv: &str, rows: usize) -> Result<(), StoreError> {
        if tsv.is_empty() {
            return Ok(());
        }
        let r = self.post(
            &format!(
                "INSERT INTO {}.{table} FORMAT TabSeparated",
                self.url.database
            ),
            tsv,
        );
        match &r {
            Ok(_) => {
                self.stats.inserts += 1;
                self.stats.rows_inserted += rows as u64;
            }
            Err(_) => self.stats.insert_errors += 1,
        }
        r.map(|_| ())
    }

    /// The sharded tables (`samples`, `histograms`, `spans`) are read from and written to as
    /// the local ones, or the `Distributed` ones over the cluster's shards: the bare name.
    pub(super) fn sharded(&self, table: &str) -> String {
        match &self.url.cluster {
            Some(_) => table.to_string(),
            None => format!("{table}_local"),
        }
    }

    /// `DB.TABLE` of a sharded table, as [`Http::sharded`] names it.
    pub(super) fn table(&self, table: &str) -> String {
        format!("{}.{}", self.db(), self.sharded(table))
    }
}

fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
