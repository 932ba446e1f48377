#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: formatting, lints, then every test.
# Everything the tests need (SQLite, compiled in) comes from crates.io; nothing else is started.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
