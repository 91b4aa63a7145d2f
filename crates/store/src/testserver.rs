//! A throwaway ClickHouse server for tests and benchmarks: Debian's `clickhouse-server` on
//! loopback ports with a config and data directory of its own, stopped by its pid.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ClickHouseServer {
    child: Option<Child>,
    pub http_port: u16,
    pub tcp_port: u16,
    pub dir: PathBuf,
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn binary() -> Result<&'static str, String> {
    ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or_else(|| {
            "clickhouse-server is not installed (Debian's clickhouse-server; scripts/install-deps.sh)"
                .to_string()
        })
}

impl ClickHouseServer {
    /// Starts a server on free ports.
    pub fn start(tag: &str) -> Result<ClickHouseServer, String> {
        ClickHouseServer::start_on(tag, free_port(), free_port(), "")
    }

    /// Starts a server on the given ports, with `extra` XML inside `<yandex>` (e.g. a
    /// `<remote_servers>` cluster).
    pub fn start_on(
        tag: &str,
        http_port: u16,
        tcp_port: u16,
        extra: &str,
    ) -> Result<ClickHouseServer, String> {
        let dir = std::env::temp_dir().join(format!("baton-ch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let d = dir.display();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
  {extra}
</yandex>
"#
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#,
        )
        .map_err(|e| e.to_string())?;
        let mut s = ClickHouseServer {
            child: None,
            http_port,
            tcp_port,
            dir,
        };
        s.restart()?;
        Ok(s)
    }

    /// `clickhouse://127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("clickhouse://127.0.0.1:{}/{db}", self.http_port)
    }

    /// Starts it again (after [`ClickHouseServer::stop`]) on the same ports and data, and waits
    /// until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let child = Command::new(binary()?)
            .arg(format!("--config-file={}/config.xml", self.dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting clickhouse-server: {e}"))?;
        // A server kept in a static (the conformance suite shares one) is never dropped, so a
        // watcher kills it once the process that started it is gone.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null",
                std::process::id(),
                child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        let t0 = Instant::now();
        while !self.ping() {
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "clickhouse-server did not answer on port {} within 60 s; see {}/error.log",
                    self.http_port,
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills it (SIGKILL, as a crash would), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it answers `/ping`.
    pub fn ping(&self) -> bool {
        self.get("/ping").is_some_and(|b| b.contains("Ok."))
    }

    /// The body of a GET on its HTTP interface.
    pub fn get(&self, path_and_query: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    /// Runs a statement that changes something (DDL, inserts): a POST, since GET is read-only.
    /// Returns ClickHouse's answer, or its error text.
    pub fn exec(&self, sql: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).map_err(|e| e.to_string())?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        write!(
            s,
            "POST / HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            Ok(body.to_string())
        } else {
            Err(body.trim().to_string())
        }
    }

    /// The first value of a query's answer, as a number.
    pub fn count(&self, sql: &str) -> Option<u64> {
        let q: String = sql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.get(&format!("/?query={q}"))?.trim().parse().ok()
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
