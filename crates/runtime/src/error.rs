//! The runtime's error: what went wrong starting or running `up`, `agent`, `server` or a gated
//! command, with the causes callers tell apart (the user's input, the profiler, the store).

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_agent::AgentError;
use baton_config::ConfigError;
use baton_profilers::ProfilerError;
use baton_store::StoreError;

use crate::client::ClientError;

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address to listen on is taken.
    #[error("{0} is already in use; stop the other process or pick another address with --listen")]
    AddrInUse(String),
    /// The address to listen on cannot be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    /// The tokens file cannot be used.
    #[error("{0}")]
    Tokens(String),
    /// A non-loopback address without a tokens file.
    #[error(
        "{0} is not loopback: give --auth FILE (lines of ROLE NAME TOKEN) so every call needs a token"
    )]
    NeedsAuth(SocketAddr),
    /// The config tree given at start does not validate.
    #[error(
        "the config in {} has {problems} problem(s); fix them (baton config check {} lists them)",
        dir.display(),
        dir.display()
    )]
    ConfigInvalid { dir: PathBuf, problems: usize },
    /// The config tree given at start cannot be read.
    #[error("{0}")]
    Config(ConfigError),
    /// The command to profile cannot be run.
    #[error("command not found or not executable: {0}")]
    CommandNotFound(String),
    /// The command line to run holds a NUL byte.
    #[error("{0}")]
    NulByte(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Profiler(#[from] ProfilerError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A system call or file operation, named by what it was for.
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The buffer directory cannot be created.
    #[error("cannot create the buffer directory {}: {error}", dir.display())]
    BufferDir { dir: PathBuf, error: std::io::Error },
    /// The collector thread died before it reported how its start went.
    #[error("the collector thread died while starting")]
    CollectorDied,
    /// The collector thread panicked.
    #[error("the collector thread panicked")]
    CollectorPanicked,
    #[error(transparent)]
    OtherIo(#[from] std::io::Error),
}

impl Error {
    /// Wraps an I/O error with what it was for.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { what, source }
    }

    /// The profiler's error behind this one, if any: its kind says whose fault it is.
    pub fn profiler(&self) -> Option<&ProfilerError> {
        match self {
            Error::Profiler(p) | Error::Agent(AgentError::Profiler(p)) => Some(p),
            _ => None,
        }
    }

    /// Whether the user can fix it by changing the command line, the config or a file they
    /// named.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::AddrInUse(_)
                | Error::Listen { .. }
                | Error::Tokens(_)
                | Error::NeedsAuth(_)
                | Error::ConfigInvalid { .. }
                | Error::Config(_)
                | Error::CommandNotFound(_)
                | Error::NulByte(_)
                | Error::Store(StoreError::NotWritable { .. } | StoreError::Locked { .. })
        )
    }
}
