#!/usr/bin/env bash
# The whole test suite, as CI runs it: deps, formatting, lints, then every test in release (one
# build profile, shared with `cargo build --release`). Run as root: the BPF tests need it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace -- --test-threads=2
