//! The campaign for the control plane against a real etcd (`/usr/bin/etcd`, Debian's
//! `etcd-server`), started on free ports in a temporary directory: exactly one of two servers
//! leads and both know its URL; the other takes over when it stops; a leader steps down when
//! etcd dies; a dead leader's key expires with its lease.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_runtime::leader::{leader_key, spawn_campaign_until};
use baton_server::leader::Leadership;

const ETCD: &str = "/usr/bin/etcd";
const TTL: Duration = Duration::from_secs(2);

/// An etcd of one member, removed on drop.
struct Etcd {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Etcd {
    fn start(name: &str) -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server (scripts/install-deps.sh does)"
        );
        let dir = std::env::temp_dir().join(format!("baton-etcd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let child = Command::new(ETCD)
            .args(["--name", "n0", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("n0={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {ETCD}: {e}"));
        let etcd = Etcd { child, dir, url };
        let healthy = wait_until(Duration::from_secs(20), || {
            ureq::get(format!("{}/health", etcd.url))
                .call()
                .ok()
                .and_then(|r| r.into_body().read_to_string().ok())
                .is_some_and(|b| b.contains("true"))
        });
        assert!(
            healthy.is_some(),
            "etcd did not become healthy in 20 s; its log:\n{}",
            std::fs::read_to_string(etcd.dir.join("etcd.log")).unwrap_or_default()
        );
        etcd
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// POSTs to the JSON gateway, as a server that then dies would.
    fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = ureq::post(format!("{}{path}", self.url))
            .send(body.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&r.into_body().read_to_string().expect("body")).expect("json")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// How long it took `f` to hold, if it did within `limit`.
fn wait_until(limit: Duration, f: impl Fn() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f().then(|| t0.elapsed())
}

/// A server's campaign, stopped by its own flag.
struct Server {
    url: String,
    leadership: Arc<Leadership>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(endpoints: Vec<String>, cluster: &str, url: &str) -> Server {
        let leadership = Leadership::follower(url.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = spawn_campaign_until(
            endpoints,
            cluster.to_string(),
            url.to_string(),
            TTL,
            leadership.clone(),
            move || flag.load(Ordering::SeqCst),
        )
        .expect("campaign");
        Server {
            url: url.to_string(),
            leadership,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the campaign, which revokes its lease.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("campaign thread");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn one_leads_the_other_takes_over_and_a_leader_without_etcd_steps_down() {
    let mut etcd = Etcd::start("two");
    let mut a = Server::start(vec![etcd.url.clone()], "two", "http://a.test:7070");
    let mut b = Server::start(vec![etcd.url.clone()], "two", "http://b.test:7070");

    let settled = wait_until(Duration::from_secs(10), || {
        let (la, lb) = (a.leadership.is_leader(), b.leadership.is_leader());
        let leader = if la { &a.url } else { &b.url };
        la != lb
            && a.leadership.leader_url().as_ref() == Some(leader)
            && b.leadership.leader_url().as_ref() == Some(leader)
    });
    assert!(
        settled.is_some(),
        "no single leader known to both in 10 s: a {} ({:?}), b {} ({:?})",
        a.leadership.is_leader(),
        a.leadership.leader_url(),
        b.leadership.is_leader(),
        b.leadership.leader_url()
    );
    // It stays that way over several renewals.
    let t0 = Instant::now();
    while t0.elapsed() < TTL * 2 {
        assert!(
            a.leadership.is_leader() != b.leadership.is_leader(),
            "exactly one leads at every moment"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (leader, other) = if a.leadership.is_leader() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(leader.leadership.epoch(), 1);
    assert_eq!(other.leadership.epoch(), 0);

    // The leader stops: it revokes its lease, and the other leads within the TTL (and 1 s).
    leader.stop();
    assert!(!leader.leadership.is_leader());
    let took = wait_until(TTL + Duration::from_secs(1), || {
        other.leadership.is_leader()
            && other.leadership.leader_url().as_deref() == Some(other.url.as_str())
    });
    assert!(
        took.is_some(),
        "the other server did not take over within {:?}",
        TTL + Duration::from_secs(1)
    );
    assert_eq!(other.leadership.epoch(), 1);
    eprintln!(
        "took over {:?} after the leader stopped",
        took.unwrap_or_default()
    );

    // etcd dies: the leader cannot renew, and steps down before its lease could have ended.
    etcd.kill();
    let down = wait_until(TTL, || !other.leadership.is_leader());
    assert!(
        down.is_some(),
        "the leader still leads {TTL:?} after etcd died"
    );
    assert_eq!(other.leadership.leader_url(), None, "no leader is known");
    eprintln!(
        "stepped down {:?} after etcd died",
        down.unwrap_or_default()
    );
}

#[test]
fn a_dead_leaders_key_expires_with_its_lease() {
    let etcd = Etcd::start("ghost");
    // A server that took the key and died: its lease is never renewed.
    let granted = Instant::now();
    let lease = etcd.post(
        "/v3/lease/grant",
        serde_json::json!({ "TTL": TTL.as_secs() }),
    );
    let id = lease["ID"].as_str().expect("lease ID").to_string();
    let b64 = |s: &str| {
        let out = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
                c.wait_with_output()
            })
            .expect("base64");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let put = etcd.post(
        "/v3/kv/put",
        serde_json::json!({
            "key": b64(&leader_key("ghost")),
            "value": b64("http://dead.test:7070"),
            "lease": id,
        }),
    );
    assert!(put.get("header").is_some(), "put: {put}");

    // A first endpoint that is down: the campaign fails over to the next.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = Server::start(vec![dead, etcd.url.clone()], "ghost", "http://c.test:7070");
    let knows = wait_until(TTL / 2, || {
        c.leadership.leader_url().as_deref() == Some("http://dead.test:7070")
    });
    assert!(
        knows.is_some(),
        "the campaign did not learn the leader's URL"
    );
    assert!(!c.leadership.is_leader());

    // The lease ends after its TTL (etcd checks every 500 ms); the next poll takes the key.
    let limit = TTL + TTL / 3 + Duration::from_secs(1);
    let took = wait_until(limit, || c.leadership.is_leader());
    assert!(
        took.is_some(),
        "did not lead {limit:?} after the dead leader's lease could have expired"
    );
    assert!(
        granted.elapsed() >= TTL,
        "led before the dead leader's lease expired"
    );
    eprintln!(
        "led {:?} after the dead leader's lease was granted",
        granted.elapsed()
    );
}
