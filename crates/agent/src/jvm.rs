//! Asks running JVMs for their JIT perf maps: `jcmd PID Compiler.perfmap` (JDK 17+) writes
//! `/tmp/perf-PID.map`, which the symbolizer then reads like any other runtime's.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often a JVM is asked again: it keeps compiling methods while it runs.
const EVERY: Duration = Duration::from_secs(2);

/// Whether `pid` runs a JVM: its executable is named `java`.
pub fn is_jvm(exe: &str) -> bool {
    exe.rsplit('/').next() == Some("java")
}

/// The `jcmd` next to the JVM's own `java`, else the one on `PATH`.
fn jcmd_for(exe: &str) -> String {
    let sibling = std::path::Path::new(exe).with_file_name("jcmd");
    if sibling.exists() {
        sibling.display().to_string()
    } else {
        "jcmd".to_string()
    }
}

/// Requests in flight and when each JVM was last asked.
#[derive(Debug, Default)]
pub struct JvmMaps {
    asked: HashMap<u32, Instant>,
    running: Vec<(u32, Child)>,
    /// Requests started, and requests that failed to start or exited non-zero.
    pub requested: u64,
    pub failed: u64,
}

impl JvmMaps {
    /// Asks the JVM `pid` (running `exe`) for its perf map unless it was asked recently. Never
    /// blocks: `jcmd` runs in the background, as the JVM's own user (the attach mechanism
    /// accepts only that user), and is reaped by later calls.
    pub fn request(&mut self, pid: u32, exe: &str) {
        self.reap();
        if self.asked.get(&pid).is_some_and(|t| t.elapsed() < EVERY)
            || self.running.iter().any(|(p, _)| *p == pid)
        {
            return;
        }
        self.asked.insert(pid, Instant::now());
        let Ok(meta) = std::fs::metadata(format!("/proc/{pid}")) else {
            return;
        };
        let mut cmd = Command::new(jcmd_for(exe));
        cmd.arg(pid.to_string())
            .arg("Compiler.perfmap")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.uid(meta.uid()).gid(meta.gid());
        match cmd.spawn() {
            Ok(child) => {
                self.requested += 1;
                self.running.push((pid, child));
            }
            Err(e) => {
                self.failed += 1;
                tracing::debug!(pid, error = %e, "jcmd did not start");
            }
        }
    }

    /// Reaps finished `jcmd`s; one still running after 10 s is killed.
    pub fn reap(&mut self) {
        let mut failed = 0;
        self.running
            .retain_mut(|(pid, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        failed += 1;
                        tracing::debug!(pid, ?status, "jcmd Compiler.perfmap failed");
                    }
                    false
                }
                Ok(None) => {
                    let started = self.asked.get(pid).copied();
                    if started.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                        let _ = child.kill();
                        let _ = child.wait();
                        failed += 1;
                        false
                    } else {
                        true
                    }
                }
                Err(_) => false,
            });
        self.failed += failed;
    }

    /// Waits (up to `timeout`) for requests in flight, so a map asked for is on disk.
    pub fn settle(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while !self.running.is_empty() && Instant::now() < end {
            self.reap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for JvmMaps {
    fn drop(&mut self) {
        for (_, c) in &mut self.running {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn recognises_java_executables() {
        assert!(super::is_jvm("/usr/lib/jvm/java-17-openjdk-amd64/bin/java"));
        assert!(!super::is_jvm("/usr/bin/javac"));
        assert!(!super::is_jvm("/usr/bin/node"));
    }
}
