#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: provisions what the tests need, checks formatting
# and lints, then runs every test.
#
# - SQLite is compiled in (crates.io); TLS is rustls (crates.io), with a throwaway CA made by the
#   tests (rcgen).
# - A real Matrix homeserver: Synapse from PyPI, in a venv under target/synapse-venv (kept between
#   runs); the tests start and stop their own homeservers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

SYNAPSE_VERSION="1.163.2"
SYNAPSE_VENV="${MESHGATE_SYNAPSE_VENV:-$PWD/target/synapse-venv}"
if ! "$SYNAPSE_VENV/bin/python" -c "import synapse, sys; sys.exit(synapse.__version__ != '$SYNAPSE_VERSION')" 2>/dev/null; then
  echo "provisioning Synapse $SYNAPSE_VERSION in $SYNAPSE_VENV"
  rm -rf "$SYNAPSE_VENV"
  python3 -m venv "$SYNAPSE_VENV"
  "$SYNAPSE_VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION"
fi
export MESHGATE_SYNAPSE_PYTHON="$SYNAPSE_VENV/bin/python"

# The README's and the quickstart's commands are run as written: they use curl.
if ! command -v curl >/dev/null; then
  echo "provisioning curl"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq curl; else sudo apt-get install -y -qq curl; fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
