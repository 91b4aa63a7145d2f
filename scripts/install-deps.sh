#!/usr/bin/env bash
# Installs everything Baton needs to build, run and test on Debian 12, as root. Idempotent: it
# only installs what is missing. Packages come from Debian and npm only.
set -euo pipefail

DUCKDB_VERSION=1.5.6-r.1   # engine 1.5.6; matches the duckdb crate's 1.10500.x C API
# libjemalloc2, libjemalloc-dev: the heap tests' jemalloc programs (shared and static); erlang-base: the BEAM JIT perf-map test;
# python3.11-dbg: debug files that name static functions of python3.11's extension modules.
# etcd-server: the leader lease of servers sharing a store (--etcd); tests start their own etcd
# on free ports, so the packaged service is not needed running.
APT_PACKAGES=(clang llvm clang-16 llvm-16 bolt-16 valgrind bc libelf-dev zlib1g-dev pkg-config bpftool linux-perf golang-go chromium util-linux nodejs openjdk-17-jdk-headless systemtap-sdt-dev iproute2 openssl curl binutils libc6-dbg bpftrace clickhouse-server etcd-server libjemalloc2 libjemalloc-dev erlang-base python3.11-dbg)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: run me as root (apt-get, /usr/local/lib and tracefs need it)" >&2
  exit 77
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# DuckDB: a prebuilt libduckdb.so from the npm registry, instead of compiling DuckDB's C++ (about
# 19 minutes on 2 cores). The duckdb crate links it through DUCKDB_LIB_DIR (.cargo/config.toml).
marker=/usr/local/lib/libduckdb.baton-version
if [ ! -f /usr/local/lib/libduckdb.so ] || [ "$(cat "$marker" 2>/dev/null)" != "$DUCKDB_VERSION" ]; then
  echo "install-deps: libduckdb.so $DUCKDB_VERSION from npm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@duckdb/node-bindings-linux-x64@$DUCKDB_VERSION" >/dev/null && tar xzf ./*.tgz)
  install -m 0755 "$tmp/package/libduckdb.so" /usr/local/lib/libduckdb.so
  echo "$DUCKDB_VERSION" > "$marker"
  rm -rf "$tmp"
  ldconfig
fi

# playwright-core for the UI tests, from the npm registry at the version of the committed
# lockfile; it drives Debian's chromium (no browser download).
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$here/tests/ui/node_modules/playwright-core/package.json" ] \
  || [ "$here/tests/ui/package-lock.json" -nt "$here/tests/ui/node_modules/.package-lock.json" ]; then
  echo "install-deps: playwright-core (npm ci in tests/ui)"
  (cd "$here/tests/ui" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

# kubernetes-validate (PyPI: the Kubernetes schemas, offline) for the deploy/ manifests' test,
# in a venv of its own (Debian's python3 is externally managed).
KV_VERSION=1.37.0
if ! /opt/baton-venv/bin/kubernetes-validate --version 2>/dev/null | grep -q "$KV_VERSION"; then
  echo "install-deps: kubernetes-validate $KV_VERSION (in /opt/baton-venv)"
  python3 -m venv /opt/baton-venv
  /opt/baton-venv/bin/pip install --quiet "kubernetes-validate==$KV_VERSION"
fi

# tracefs is not mounted at boot on these machines; tracepoint profilers need it.
if ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing && echo "install-deps: mounted tracefs on /sys/kernel/tracing"
fi

command -v cargo >/dev/null || { echo "install-deps: a Rust toolchain (cargo) is required" >&2; exit 1; }
echo "install-deps: ok"
