//! The live config: loaded at start, then watched (a directory, polled every second) or taken
//! from the fleet server. A changed tree is validated whole: a good one replaces the live
//! config, a broken one is logged with every problem and counted, and the last good one stays.

use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use baton_config::{ConfigError, SourceFile};
use baton_model::sync;
use baton_model::time::now_ms;
use baton_server::auth::Audit;
use baton_server::fleet::Fleet;
use baton_server::LiveConfig;
use serde_json::json;

use crate::stop::stop_requested;
use crate::Error;

/// The option names the registry declares for a profiler (for config validation).
pub fn registry_options(name: &str) -> Option<Vec<&'static str>> {
    baton_profilers::registry::find(name)
        .ok()
        .map(|r| r.info.options.iter().map(|o| o.name).collect())
}

fn known_profilers() -> Vec<&'static str> {
    baton_profilers::registry::builtin_names()
}

/// An empty config: the defaults of every limit, no services.
pub fn default_config() -> baton_config::Config {
    baton_config::load(&[], &[]).expect("an empty tree is valid")
}

/// Loads the tree at start; a broken tree stops the command before anything runs, with every
/// problem printed as `file:line:col: message`.
pub fn load_initial_config(dir: &Path) -> Result<LiveConfig, Error> {
    match baton_config::load_dir_checked(dir, &known_profilers(), &registry_options) {
        Ok(cfg) => {
            eprintln!("baton: config {} version {}", dir.display(), cfg.version);
            baton_profilers::registry::set_adhoc(cfg.adhoc.values());
            Ok(LiveConfig {
                dir: dir.display().to_string(),
                config: Some(cfg),
                files: baton_config::read_tree(dir)
                    .map(|f| files_text(&f))
                    .unwrap_or_default(),
                loaded_at_ms: now_ms(),
                ..Default::default()
            })
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                eprintln!(
                    "{}",
                    dir.join(&p.file).display().to_string()
                        + &format!(":{}:{}: {}", p.line, p.col, p.message)
                );
            }
            Err(Error::ConfigInvalid {
                dir: dir.to_path_buf(),
                problems: problems.len(),
            })
        }
        Err(e) => Err(Error::Config(e)),
    }
}

/// The files of a tree as `(path, text)`.
pub fn files_text(files: &[SourceFile]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|f| (f.path.display().to_string(), f.text.clone()))
        .collect()
}

/// Polls the directory every second until a stop is asked for. `on_change` hears of every new
/// version, accepted or not.
pub fn watch_config(dir: &Path, live: &RwLock<LiveConfig>, on_change: &dyn Fn(bool, &str)) {
    let mut seen = sync::read(live).config.as_ref().map(|c| c.version.clone());
    while !stop_requested() {
        std::thread::sleep(Duration::from_secs(1));
        let files = match baton_config::read_tree(dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reading the config directory failed");
                continue;
            }
        };
        let version = baton_config::version_of(&files);
        if seen.as_deref() == Some(version.as_str()) {
            continue;
        }
        seen = Some(version.clone());
        let mut l = sync::write(live);
        match baton_config::load_checked(&files, &known_profilers(), &registry_options) {
            Ok(cfg) => {
                eprintln!("baton: config reloaded, version {}", cfg.version);
                baton_profilers::registry::set_adhoc(cfg.adhoc.values());
                l.config = Some(cfg);
                l.files = files_text(&files);
                on_change(true, &version);
                l.loaded_at_ms = now_ms();
                l.reloads += 1;
                l.last_errors.clear();
            }
            Err(e) => {
                l.rejected += 1;
                l.last_errors = e
                    .problems()
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{}:{}: {}",
                            dir.join(&p.file).display(),
                            p.line,
                            p.col,
                            p.message
                        )
                    })
                    .collect();
                on_change(false, &version);
                eprintln!(
                    "baton: config version {version} rejected; keeping version {}",
                    l.config
                        .as_ref()
                        .map(|c| c.version.as_str())
                        .unwrap_or("none")
                );
                for line in &l.last_errors {
                    eprintln!("  {line}");
                }
            }
        }
    }
}

/// Validates a tree the fleet server sent with this host's registry and makes it live; a tree
/// this host cannot run is logged and the last good one stays.
pub fn apply_server_config(live: &RwLock<LiveConfig>, c: baton_server::fleet::ConfigFiles) {
    let files: Vec<SourceFile> = c
        .files
        .iter()
        .map(|(p, t)| SourceFile {
            path: p.into(),
            text: t.clone(),
        })
        .collect();
    let mut l = sync::write(live);
    match baton_config::load_checked(&files, &known_profilers(), &registry_options) {
        Ok(cfg) => {
            eprintln!(
                "baton agent: config version {} from the server",
                cfg.version
            );
            l.config = Some(cfg);
            l.files = c.files;
            l.reloads += 1;
            l.loaded_at_ms = now_ms();
        }
        Err(e) => {
            l.rejected += 1;
            eprintln!(
                "baton agent: the server's config version {} does not validate here; keeping the last good one",
                c.version
            );
            for p in e.problems() {
                eprintln!("  {}:{}:{}: {}", p.file.display(), p.line, p.col, p.message);
            }
        }
    }
}

/// Starts the thread that watches the config directory; every new version, accepted or not,
/// goes to the audit log, and an accepted one wakes `fleet`'s long polls.
pub fn spawn_config_watch(
    dir: PathBuf,
    live: Arc<RwLock<LiveConfig>>,
    audit: Arc<Audit>,
    fleet: Option<Arc<Fleet>>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("baton-config-watch".into())
        .spawn(move || {
            watch_config(&dir, &live, &|accepted, version| {
                audit.record(
                    "config_change",
                    json!({ "version": version, "accepted": accepted }),
                );
                if accepted {
                    if let Some(f) = &fleet {
                        f.wake();
                    }
                }
            })
        })
        .map_err(Error::io("starting the config watcher"))?;
    Ok(())
}
