//! The `baton` binary: turns command-line arguments into plain option structs and calls the
//! library crates. clap stops here.

mod agent_cmd;
mod common;
mod config_cmd;
mod fdo_cmd;
mod plan;
mod query;
mod record;
mod runs_cmd;
mod server_cmd;
mod symbolize_cmd;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use baton_runtime::client;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: a profiling orchestrator for Linux hosts",
    long_about = "Baton runs BPF profilers on this host, symbolizes their stacks and stores them \
                  in an embedded DuckDB store with a web UI.\n\n\
                  Quick start:\n  sudo baton record cpu -- ./my-program   # profile one command\n  \
                  sudo baton up                           # profile the whole host, UI on :7070",
    after_help = "Exit codes: 0 success, 1 runtime error, 2 bad usage or input, 77 missing privileges."
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// File holding the API token sent to the server (else $BATON_TOKEN_FILE, else
    /// $BATON_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for an https server (else $BATON_CA_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Profile processes on this host for a while and print or write the result. Needs no server.
    #[command(after_help = "Examples:\n  \
        sudo baton record cpu --pid 1234 --duration 30s\n  \
        sudo baton record cpu --all --frequency 49 --output host.svg\n  \
        sudo baton record cpu --output prof.pb.gz -- ./bench --iterations 100\n  \
        go tool pprof -top prof.pb.gz\n\n\
        The output format follows the file extension (.pb.gz, .folded, .speedscope.json, .svg, \
        .json) unless --format says otherwise. Without --output a top-functions table is printed.")]
    Record(RecordArgs),
    /// Profile every process on this host continuously, store it, and serve the API and UI.
    #[command(
        after_help = "Open http://127.0.0.1:7070/ for the flame graph. Data stays in --data across \
        restarts. SIGINT or SIGTERM stops cleanly: BPF is detached and the last window is written."
    )]
    Up(UpArgs),
    /// Query a running `baton up` (or server) over HTTP.
    #[command(after_help = "Examples:\n  \
        baton query --since 15m --filter comm=nginx\n  \
        baton query --since 1h --format pprof --output cpu.pb.gz\n  \
        baton query --since 5m --format collapsed | flamegraph.pl > cpu.svg")]
    Query(QueryArgs),
    /// Ask a running `baton up` for an on-demand run; it is queued, scheduled and stored.
    #[command(
        after_help = "Examples:\n  baton run cpu --target pid:1234 --duration 30s --wait\n  \
        baton run cpu --target comm:nginx --duration 10s --frequency 499 --priority 5\n\n\
        --force bypasses the soft limits (host cap, concurrency groups) and is written to the \
        audit log; the hard ceilings (max duration, max frequency) and resource exclusivity hold."
    )]
    Run(RunCli),
    /// List, show or cancel runs of a running `baton up`.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Simulate the scheduler over a fleet before committing a config change.
    #[command(
        after_help = "Example:\n  baton plan --config examples/config --fleet examples/fleet-10k.toml --simulate 24h\n\n\
        Exit 0 when no resource conflict occurred, 1 otherwise."
    )]
    Plan(PlanCli),
    /// List the profilers: what each measures, its values and units, histograms, labels, cost
    /// class, default rate and options.
    Profilers {
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Validate or show a config-as-code directory.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The central server of a fleet: agents register with it and ship to it; it schedules
    /// runs on hosts, stores everything, symbolizes by build ID and serves the API and UI.
    #[command(after_help = "Examples:\n  \
        baton server --config /etc/baton/config --data /var/lib/baton --listen 0.0.0.0:7070 --auth /etc/baton/tokens\n  \
        baton server --insecure-local --data /tmp/baton   # loopback only, no tokens\n\n\
        The tokens file has one token per line: ROLE NAME TOKEN, roles viewer, operator, admin \
        and agent. Every API call then needs `Authorization: Bearer TOKEN`; failed auth, runs, \
        forced runs and config changes go to DATA/audit.log.")]
    Server(Box<ServerArgs>),
    /// The per-host agent of a fleet: profiles this host, takes its runs from the server, and
    /// ships batches (buffered on disk while the server is unreachable).
    #[command(after_help = "Example:\n  \
        sudo baton agent --server https://baton.example:7070 --token-file /etc/baton/agent.token \\\n      \
        --ca-file /etc/baton/ca.pem --label rack=r12 --buffer-max 1GiB\n\n\
        Metrics (shipped, dropped, buffered) are on --listen, default http://127.0.0.1:7071/metrics.")]
    Agent(AgentArgs),
    /// Name addresses of an ELF file: function, file:line and inlined frames, as addr2line and
    /// llvm-symbolizer do (the symbolizer the server uses).
    #[command(after_help = "Examples:\n  \
        baton symbolize --elf ./app 0x401136 0x4011a0\n  \
        baton symbolize --elf ./app --input addrs.txt --format json\n\n\
        Addresses are virtual addresses as in the ELF file (what `nm` prints), in hex (0x…) \
        or decimal; --file-offsets takes file offsets instead.")]
    Symbolize(SymbolizeArgs),
    /// Write an LLVM sample profile (for clang -fprofile-sample-use) and a BOLT profile (for
    /// llvm-bolt) of one binary, from the CPU samples of its build ID.
    #[command(after_help = "Examples:\n  \
        sudo baton record cpu --frequency 999 --output app.pb.gz -- ./app\n  \
        baton fdo --binary ./app --input app.pb.gz --output app.afdo.txt --bolt app.fdata\n  \
        baton fdo --binary ./app --server http://baton:7070 --since 7d --filter service=app -o app.afdo.txt\n  \
        clang -O2 -fprofile-sample-use=app.afdo.txt ... ; llvm-bolt app -o app.bolt -data=app.fdata\n\n\
        Build the binary with -gline-tables-only -fdebug-info-for-profiling \
        -funique-internal-linkage-names (and -Wl,--emit-relocs for BOLT). Samples from several \
        inputs and servers are merged; counts are microseconds of CPU time. The report says how \
        much mapped to source and why the rest did not. Exit 0 when a profile was written, 1 \
        when no sample of the build ID was found (nothing is written), 2 for bad input (a binary \
        whose build ID is not --build-id).")]
    Fdo(fdo_cmd::FdoArgs),
    /// Install Baton's allocation sampler (the library the malloc profiler reads from) and
    /// show how to start a service with it.
    #[command(after_help = "Examples:\n  \
        sudo baton preload                       # install, print the path and how to use it\n  \
        LD_PRELOAD=$(sudo baton preload --quiet) ./server\n\n\
        A process started with the library samples its own allocations (1 per 2 MiB on \
        average, BATON_MALLOC_SAMPLE_BYTES sets the mean); it costs nanoseconds per allocation \
        and traps only on samples, and only while Baton profiles it. Then `baton run malloc \
        --target pid:PID` or a continuous malloc rule reads it.")]
    Preload {
        /// Where to install it.
        #[arg(long, default_value = baton_profilers::preload::DEFAULT_DIR)]
        dir: PathBuf,
        /// Print only the library's path.
        #[arg(long)]
        quiet: bool,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// The hosts of a fleet server: state, last heartbeat, kernel, labels.
    Hosts {
        #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:7070")]
        server: String,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Args)]
pub struct ServerArgs {
    /// Address for the API, the UI and the agents.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Data directory (store, debug info, audit log) [default: /var/lib/baton for root].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The config-as-code directory, watched and sent to every agent.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, the server speaks https only.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Tokens file: lines of `ROLE NAME TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// Serve without tokens; loopback addresses only.
    #[arg(long)]
    pub insecure_local: bool,
    /// A host whose agent is silent this long is gone, and its runs fail.
    #[arg(long, default_value = "30s")]
    pub host_timeout: String,
    /// How often agents call in (the long poll's length).
    #[arg(long, default_value = "5s")]
    pub heartbeat: String,
    /// A debuginfod server to ask for debug info by build ID.
    #[arg(long, value_name = "URL", env = "DEBUGINFOD_URLS")]
    pub debuginfod: Option<String>,
    /// Local debug directories holding `.build-id/xx/yyyy.debug` [default: /usr/lib/debug].
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Where samples are stored: `duckdb` (embedded, in --data; the default) or
    /// `clickhouse://HOST:8123/DB` (ClickHouse's HTTP interface; add `?cluster=NAME` to write
    /// and read through Distributed tables over a cluster's shards).
    #[arg(
        long,
        default_value = "duckdb",
        value_name = "duckdb|clickhouse://HOST:PORT/DB"
    )]
    pub store: String,
    /// ClickHouse credentials: a file of `user = NAME` and `password = SECRET` lines (else
    /// $BATON_CLICKHOUSE_USER and $BATON_CLICKHOUSE_PASSWORD, else ClickHouse's default user).
    #[arg(long, value_name = "FILE")]
    pub store_credentials: Option<PathBuf>,
    /// Samples and histograms older than this (e.g. 30d) are removed, at start and hourly. On
    /// ClickHouse whole day partitions are dropped (18.16 has no table TTL).
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,
    /// Sample rows of ingested batches that may wait for the store; past it, ingest answers
    /// 503 and agents keep their batches on disk and retry (back-pressure).
    #[arg(long, default_value_t = 200_000, value_name = "ROWS")]
    pub ingest_queue_rows: u64,
    /// How long the ingest writer waits after a batch for more to write with it (grouped
    /// writes: one INSERT per table for up to 50,000 rows).
    #[arg(long, default_value = "50ms", value_name = "DURATION")]
    pub ingest_linger: String,
    /// etcd endpoints: run as one of several servers sharing one store (ClickHouse). All take
    /// ingest and queries; the one holding an etcd lease holds the control plane (hosts, runs,
    /// heartbeats, the tuner), and another takes over when it stops or dies. Without it, this
    /// server is the only one.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// With --etcd: the name of this group of servers (its leader key is /baton/NAME/leader).
    #[arg(long, default_value = "baton", value_name = "NAME")]
    pub cluster: String,
    /// With --etcd (and required there): the URL agents and the other servers reach this one
    /// by, e.g. http://10.0.0.5:7070.
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Caps on what callers may send a server. Past one, a call gets 413 (too large), 429 (too
/// fast) or 507 (no room), at once, and the refusal is counted in /metrics.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Most bytes an ingested body may have, decompressed (or as sent).
    #[arg(long, default_value_t = 32 << 20, value_name = "BYTES")]
    pub max_body_bytes: u64,
    /// Most samples in one ingested profile.
    #[arg(long, default_value_t = 500_000, value_name = "N")]
    pub max_samples: u64,
    /// Most locations (and functions, and mappings) in one ingested profile.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub max_locations: u64,
    /// Most strings in one ingested profile's string table.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub max_strings: u64,
    /// Most location ids, values and labels all of one profile's samples list together.
    #[arg(long, default_value_t = 4_000_000, value_name = "N")]
    pub max_sample_entries: u64,
    /// Most bytes one debug-info upload may have, decompressed (it is written to disk).
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_debuginfo_bytes: u64,
    /// Most bytes all uploaded debug info may take on disk.
    #[arg(long, default_value_t = 20 << 30, value_name = "BYTES")]
    pub debuginfo_space: u64,
    /// API calls per second per token, on average (0: no limit). Agents that share a token
    /// share its rate.
    #[arg(long, default_value_t = 200.0, value_name = "PER_SECOND")]
    pub rate_limit: f64,
    /// Calls a token may make at once, above its rate.
    #[arg(long, default_value_t = 400.0, value_name = "N")]
    pub rate_burst: f64,
}

#[derive(Args)]
pub struct AgentArgs {
    /// The server's base URL. Give several (repeat the flag, or a comma-separated list) for
    /// servers sharing one store: agents fail over between them; the first reachable one takes
    /// this agent's uploads, and control calls follow the server that holds the control plane.
    #[arg(
        long,
        env = "BATON_SERVER",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        required = true
    )]
    pub server: Vec<String>,
    /// Where batches wait until the server has them; kept across restarts.
    #[arg(long, default_value = "/var/lib/baton/agent-buffer")]
    pub buffer_dir: PathBuf,
    /// The most the buffer holds (e.g. 512MiB, 1GiB); past it the oldest batches are dropped
    /// and counted.
    #[arg(long, default_value = "1GiB")]
    pub buffer_max: String,
    /// A label of this host, key=value (repeat it).
    #[arg(long)]
    pub label: Vec<String>,
    /// This host's name [default: the kernel's host name].
    #[arg(long)]
    pub host: Option<String>,
    /// Address of the agent's own /metrics. Beyond loopback it needs --metrics-token-file.
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub listen: String,
    /// A file holding the token /metrics asks for (Authorization: Bearer TOKEN).
    #[arg(long, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Continuous sampling frequency [default: the config's, else 19 Hz].
    #[arg(long, short = 'F')]
    pub frequency: Option<u64>,
    /// Continuous window length [default: the config's, else 10s].
    #[arg(long)]
    pub window: Option<String>,
    /// Use the cpu-clock software event even where hardware cycles are available.
    #[arg(long)]
    pub cpu_clock: bool,
    /// Name native frames here instead of leaving them to the server's symbolizer.
    #[arg(long)]
    pub symbolize_locally: bool,
    /// The kubelet's read-only API (e.g. http://127.0.0.1:10255): samples of Kubernetes
    /// containers get their pod, namespace and container names, not only their pod UID and
    /// container ID (which come from cgroup paths without it).
    #[arg(long, value_name = "URL", env = "BATON_KUBELET")]
    pub kubelet: Option<String>,
    /// Never upload binaries for the server's symbolizer.
    #[arg(long)]
    pub no_debuginfo_upload: bool,
    /// At stop, how long to keep sending what is buffered before leaving it on disk.
    #[arg(long, default_value = "5s")]
    pub drain_timeout: String,
    /// Treat only the processes under this cgroup (v2 path, e.g. /machines/h1) as this host's:
    /// services, their runs and triggers see no others. For several agents on one machine,
    /// each owning a slice (test rigs of simulated hosts, one agent per container host).
    #[arg(long, value_name = "CGROUP")]
    pub cgroup_scope: Option<String>,
}

#[derive(Args)]
pub struct SymbolizeArgs {
    /// The ELF file (with its symbols and, for file:line, DWARF).
    #[arg(long)]
    pub elf: PathBuf,
    /// Addresses, hex (0x…) or decimal.
    pub addrs: Vec<String>,
    /// Read addresses from this file (one or more per line; `-` is stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The addresses are file offsets, not virtual addresses.
    #[arg(long)]
    pub file_offsets: bool,
    /// text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
    /// Symbolize the input this many times and report each pass's time on stderr (the first
    /// pass is cold, the next ones warm).
    #[arg(long, default_value_t = 1, hide = true)]
    pub passes: u32,
}

/// How user stacks are unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindMode {
    /// Frame pointers where a module keeps them, DWARF CFI where it does not.
    Auto,
    /// Frame pointers only.
    Fp,
}

#[derive(Args)]
struct RunCli {
    /// The profiler to run.
    profiler: String,
    /// pid:PID, comm:NAME, exe:PATH, cgroup:PATH or service:NAME.
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "30s")]
    duration: String,
    #[arg(long, short = 'F')]
    frequency: Option<u64>,
    /// Higher runs first; FIFO within a priority.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Bypass the soft limits; audited.
    #[arg(long)]
    force: bool,
    /// A profiler option, KEY=VALUE (repeat it); `baton profilers` lists each profiler's.
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    opt: Vec<String>,
    /// Wait for the run, with progress, then print its top functions.
    #[arg(long)]
    wait: bool,
    /// The host to run on, against a fleet server (`baton hosts` lists them); optional when
    /// one host is up.
    #[arg(long)]
    host: Option<String>,
    #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
    /// table or json.
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Runs, newest first.
    List {
        #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:7070")]
        server: String,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Include continuous runs (whole-host windows and service slots), not only on-demand
        /// and triggered ones.
        #[arg(long)]
        all: bool,
    },
    /// One run as JSON: id, profiler, state, reason, queued_at, started_at, ended_at, samples.
    Show {
        id: u64,
        #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:7070")]
        server: String,
        /// json (the only format).
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Cancel a queued or running run.
    Cancel {
        id: u64,
        #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:7070")]
        server: String,
    },
}

#[derive(Args)]
struct PlanCli {
    /// The config directory to plan.
    #[arg(long)]
    config: PathBuf,
    /// The fleet description: [[group]] name, count, cpus, services = { NAME = busy CPUs }.
    #[arg(long)]
    fleet: PathBuf,
    /// How much time to simulate.
    #[arg(long, default_value = "24h")]
    simulate: String,
    /// Scheduler tick of the simulation.
    #[arg(long, default_value = "10s")]
    tick: String,
    /// Re-tune interval during the simulation [default: the config's tuner interval].
    #[arg(long)]
    tuner_interval: Option<String>,
    /// table or json.
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the whole tree: exit 0 when good, 1 with `file:line:col: message` lines when not.
    #[command(after_help = "Run it in the config repository's CI:\n  baton config check config/")]
    Check {
        /// The config directory.
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Also count, on this running `baton up` or server, how many stacks each Stack
        /// Schema rule of the tree matches.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// The range those counts cover.
        #[arg(long, default_value = "1h")]
        since: String,
        /// The profiler whose stacks they count.
        #[arg(long, default_value = "cpu")]
        profiler: String,
    },
    /// Print the effective config (defaults filled in) and its version as JSON: of a directory,
    /// or the one in force in a running `baton up` (--server).
    Show {
        /// The config directory.
        #[arg(required_unless_present = "server")]
        dir: Option<PathBuf>,
        /// Ask a running baton up which config is in force.
        #[arg(long, conflicts_with = "dir")]
        server: Option<String>,
    },
}

#[derive(Args)]
pub struct RecordArgs {
    /// The profiler to run: cpu, offcpu, … (`baton profilers` lists them all).
    pub profiler: String,
    /// Profile these processes (repeat or comma-separate). Threads and later children included.
    #[arg(long, value_delimiter = ',', conflicts_with = "all")]
    pub pid: Vec<u32>,
    /// Profile every process on the host.
    #[arg(long)]
    pub all: bool,
    /// The kubelet's read-only API (e.g. http://127.0.0.1:10255), for the pod, namespace and
    /// container names of samples in Kubernetes containers.
    #[arg(long, value_name = "URL", env = "BATON_KUBELET")]
    pub kubelet: Option<String>,
    /// How long to record, e.g. 10s, 2m. With `-- CMD` the default is until the command exits.
    #[arg(long, short = 'd')]
    pub duration: Option<String>,
    /// Samples per second per CPU.
    #[arg(long, short = 'F', default_value_t = baton_profilers::cpu::DEFAULT_RECORD_HZ)]
    pub frequency: u64,
    /// Write the profile here; the format follows the extension unless --format is given.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// pprof, collapsed, speedscope, svg or json. Without --output, json and collapsed go to stdout.
    #[arg(long, short = 'f')]
    pub format: Option<String>,
    /// Rows in the printed top-functions table.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Use the cpu-clock software event even where hardware cycles are available.
    #[arg(long)]
    pub cpu_clock: bool,
    /// offcpu: the shortest block recorded (shorter ones are only counted), e.g. 100us, 1ms.
    /// Default: 1ms. The same as `--opt min_block=DURATION`.
    #[arg(long, value_name = "DURATION")]
    pub min_block: Option<String>,
    /// A profiler option, KEY=VALUE (repeat it), e.g. `--opt sample_bytes=0` for exact malloc
    /// figures; `baton profilers` lists every profiler's options and defaults.
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// The value shown by the top table and written by collapsed, speedscope, svg and json,
    /// for profilers that measure several (malloc: alloc_bytes, alloc_count, live_bytes).
    /// pprof always carries them all. Default: the profiler's first.
    #[arg(long, value_name = "NAME")]
    pub value: Option<String>,
    /// How user stacks are unwound: `auto` walks frame pointers where a module keeps them and
    /// unwinds the rest from DWARF CFI (.eh_frame) on a copy of the stack; `fp` walks frame
    /// pointers only (cheaper, but code built without them shows little more than its leaf).
    #[arg(long, value_enum, default_value_t = UnwindMode::Auto)]
    pub unwind: UnwindMode,
    /// Do not ask sampled JVMs for their JIT symbol maps (by default Baton runs
    /// `jcmd PID Compiler.perfmap`, as the JVM's user, every 2 s while it samples them).
    #[arg(long)]
    pub no_jvm_perf_map: bool,
    /// With the profiler `adhoc`: the bpftrace script to run (see `examples/config/adhoc/`).
    /// Without a `// baton:` header, each map's kind is inferred from how the script uses it,
    /// and said. It chooses its own targets; --pid, --all and -- CMD are optional, and filter
    /// rows keyed by `pid`.
    #[arg(long, value_name = "FILE.bt")]
    pub script: Option<PathBuf>,
    /// With the profiler `adhoc`: the bpftrace program itself, as `bpftrace -e` takes it, e.g.
    /// 'profile:hz:49 { @hot[ustack] = count(); }' (map kinds inferred).
    #[arg(
        short = 'e',
        long = "program",
        value_name = "PROGRAM",
        conflicts_with = "script"
    )]
    pub program: Option<String>,
    /// The command to start and profile from its first instruction.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct UpArgs {
    /// Address for the API and UI.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Data directory [default: /var/lib/baton for root, else ~/.local/share/baton].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Samples per second per CPU for continuous profiling [default: the config's
    /// [profilers.cpu] frequency, else 19].
    #[arg(long, short = 'F')]
    pub frequency: Option<u64>,
    /// A config-as-code directory; it is watched, and a good edit applies without a restart.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Length of an aggregation window; each window becomes one batch in the store. Default:
    /// the config's `[profilers.cpu] window`, else 10s.
    #[arg(long)]
    pub window: Option<String>,
    /// Use the cpu-clock software event even where hardware cycles are available.
    #[arg(long)]
    pub cpu_clock: bool,
    /// How user stacks are unwound: `auto` walks frame pointers where a module keeps them and
    /// unwinds the rest from DWARF CFI (.eh_frame) on a copy of the stack; `fp` walks frame
    /// pointers only (cheaper, but code built without them shows little more than its leaf).
    #[arg(long, value_enum, default_value_t = UnwindMode::Auto)]
    pub unwind: UnwindMode,
    /// Tokens file (lines of `ROLE NAME TOKEN`). Needed when --listen is not loopback; on
    /// loopback without it, every caller is the local admin (insecure-local).
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// The kubelet's read-only API (e.g. http://127.0.0.1:10255): samples of Kubernetes
    /// containers get their pod, namespace and container names, not only their pod UID and
    /// container ID (which come from cgroup paths without it).
    #[arg(long, value_name = "URL", env = "BATON_KUBELET")]
    pub kubelet: Option<String>,
}

#[derive(Args)]
pub struct QueryArgs {
    /// Base URL of a running baton up or server.
    #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    #[arg(long, default_value = "cpu")]
    pub profiler: String,
    /// How far back to look, e.g. 5m, 1h.
    #[arg(long, default_value = "5m")]
    pub since: String,
    /// Label filter, repeatable: comm=NAME, pid=N, exe=PATH, cgroup=PATH, a profiler's own
    /// (state=sleeping, syscall=write, op=write, function=NAME) and the ones threads publish
    /// (endpoint=/checkout, trace_id=HEX); `!=` and `~regex` too.
    #[arg(long)]
    pub filter: Vec<String>,
    /// The value to show, for profilers that measure several (malloc: alloc_bytes,
    /// alloc_count, live_bytes). Default: the profiler's first.
    #[arg(long, value_name = "NAME")]
    pub value: Option<String>,
    /// Totals per value of a label instead of stacks: a column (comm, pid, service…), a
    /// profiler's own label, or one threads publish (--by endpoint). With --format json, the
    /// values as JSON.
    #[arg(long, value_name = "LABEL")]
    pub by: Option<String>,
    /// top, collapsed, pprof, json, or hist (the profiler's histograms, with percentiles).
    #[arg(long, short = 'f', default_value = "top")]
    pub format: String,
    /// Write here instead of stdout (required for pprof on a terminal).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Rows for --format top.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    common::init_logging(&cli.log);
    client::set_options(client::ClientOptions {
        token_file: cli.token_file.clone(),
        ca_file: cli.ca_file.clone(),
    });
    let res = match cli.command {
        Command::Record(a) => record::run(a),
        Command::Up(a) => up::run(a),
        Command::Server(a) => server_cmd::run(*a),
        Command::Agent(a) => agent_cmd::run(a),
        Command::Symbolize(a) => symbolize_cmd::run(a),
        Command::Fdo(a) => fdo_cmd::run(a),
        Command::Hosts { server, format } => runs_cmd::hosts(&server, format == "json"),
        Command::Query(a) => query::run(a),
        Command::Profilers { format } => common::list_profilers(format == "json"),
        Command::Preload { dir, quiet, format } => common::preload(&dir, quiet, format == "json"),
        Command::Config(ConfigCommand::Check {
            dir,
            json,
            server,
            since,
            profiler,
        }) => config_cmd::check(
            &dir,
            json,
            server.map(|url| config_cmd::SchemaCount {
                url,
                since,
                profiler,
            }),
        ),
        Command::Run(r) => runs_cmd::run(runs_cmd::RunArgs {
            json: r.format == "json",
            profiler: r.profiler,
            target: r.target,
            duration: r.duration,
            frequency: r.frequency,
            priority: r.priority,
            force: r.force,
            options: r.opt,
            wait: r.wait,
            host: r.host,
            server: r.server,
            top: 20,
        }),
        Command::Runs(RunsCommand::List {
            server,
            format,
            all,
        }) => runs_cmd::list(&server, format == "json", all),
        Command::Runs(RunsCommand::Show { id, server, .. }) => runs_cmd::show(&server, id),
        Command::Runs(RunsCommand::Cancel { id, server }) => runs_cmd::cancel(&server, id),
        Command::Plan(p) => match p.format.as_str() {
            "table" | "json" => plan::run(plan::PlanArgs {
                json: p.format == "json",
                config: p.config,
                fleet: p.fleet,
                simulate: p.simulate,
                tick: p.tick,
                tuner_interval: p.tuner_interval,
            }),
            other => Err(common::usage(format!(
                "unknown --format {other:?}; use table or json"
            ))),
        },
        Command::Config(ConfigCommand::Show { dir, server }) => match (dir, server) {
            (Some(d), _) => config_cmd::show(&d),
            (None, Some(url)) => config_cmd::show_server(&url),
            (None, None) => Err(common::usage("give a config DIR or --server URL")),
        },
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", common::one_line(&e));
            ExitCode::from(common::exit_code(&e))
        }
    }
}
