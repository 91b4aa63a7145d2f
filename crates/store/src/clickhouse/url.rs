//! Where a ClickHouse store is: its URL, and the credentials that come from elsewhere.

/// Where a ClickHouse store is: `clickhouse://HOST:PORT/DB` (the HTTP port, 8123 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseUrl {
    /// `http://HOST:PORT`.
    pub base: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The table samples are written to and read from: `samples`, or a `Distributed` table over
    /// the shards' `samples` (`?distributed=CLUSTER`).
    pub cluster: Option<String>,
}

impl ClickHouseUrl {
    /// Parses `clickhouse://HOST[:PORT]/DB[?cluster=NAME]`. Credentials come from the
    /// environment (`BATON_CLICKHOUSE_USER`, `BATON_CLICKHOUSE_PASSWORD`) or a file given to the
    /// caller, never from the URL, so they stay out of process listings and logs.
    pub fn parse(url: &str) -> Result<ClickHouseUrl, String> {
        let rest = url.strip_prefix("clickhouse://").ok_or_else(|| {
            format!("{url:?} is not a ClickHouse URL; write clickhouse://HOST:8123/DB")
        })?;
        let (hostport, tail) = rest.split_once('/').unwrap_or((rest, "baton"));
        let (db, query) = tail.split_once('?').unwrap_or((tail, ""));
        if hostport.is_empty() || hostport.contains('@') {
            return Err(format!(
                "{url:?}: give HOST:PORT, and pass credentials through BATON_CLICKHOUSE_USER and BATON_CLICKHOUSE_PASSWORD or --store-credentials"
            ));
        }
        let db = if db.is_empty() { "baton" } else { db };
        if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad database name {db:?}: letters, digits and _"));
        }
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:8123")
        };
        let mut cluster = None;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("cluster", c))
                    if !c.is_empty()
                        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') =>
                {
                    cluster = Some(c.to_string())
                }
                _ => {
                    return Err(format!(
                        "{url:?}: unknown option {kv:?} (known: cluster=NAME)"
                    ))
                }
            }
        }
        Ok(ClickHouseUrl {
            base: format!("http://{hostport}"),
            database: db.to_string(),
            user: std::env::var("BATON_CLICKHOUSE_USER").ok(),
            password: std::env::var("BATON_CLICKHOUSE_PASSWORD").ok(),
            cluster,
        })
    }

    /// Reads `user` and `password` from a file of `user = NAME` / `password = SECRET` lines.
    pub fn with_credentials_file(mut self, path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("user", v)) => self.user = Some(v.to_string()),
                Some(("password", v)) => self.password = Some(v.to_string()),
                _ => {
                    return Err(format!(
                        "{}: expected `user = NAME` or `password = SECRET`, got {line:?}",
                        path.display()
                    ))
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_inline_credentials() {
        let u = ClickHouseUrl::parse("clickhouse://127.0.0.1:18123/prof").expect("url");
        assert_eq!(
            (u.base.as_str(), u.database.as_str()),
            ("http://127.0.0.1:18123", "prof")
        );
        let u = ClickHouseUrl::parse("clickhouse://ch/").expect("url");
        assert_eq!(
            (u.base.as_str(), u.database.as_str()),
            ("http://ch:8123", "baton")
        );
        let u = ClickHouseUrl::parse("clickhouse://ch:8123/b?cluster=two").expect("url");
        assert_eq!(u.cluster.as_deref(), Some("two"));
        assert!(ClickHouseUrl::parse("clickhouse://u:p@ch/b").is_err());
        assert!(ClickHouseUrl::parse("http://ch/b").is_err());
        assert!(ClickHouseUrl::parse("clickhouse://ch/b;drop").is_err());
    }
}
