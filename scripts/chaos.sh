#!/usr/bin/env bash
# The reliability harness's long runs (docs/reliability.md): the gateway killed with SIGKILL at
# seeded random moments, round after round, each round under a team's load (64 clients, 2,000
# deliveries, 40 of them changes that start builds), and workers killed mid-build. Bounded by the
# rounds.
#
#   scripts/chaos.sh [GATEWAY_ROUNDS] [WORKER_ROUNDS] [SEED]     (defaults: 50 20 20261129)
#
# MESHGATE_CHAOS_DELIVERIES, MESHGATE_CHAOS_CLIENTS and MESHGATE_CHAOS_CHANGES change a round's load.
#
# Needs what the test command provisions (Synapse in target/synapse-venv): run ./scripts/test.sh
# once first.
set -euo pipefail
cd "$(dirname "$0")/.."
export MESHGATE_CHAOS_ROUNDS="${1:-50}" MESHGATE_WORKER_CHAOS_ROUNDS="${2:-20}" MESHGATE_CHAOS_SEED="${3:-20261129}"
export MESHGATE_CHAOS_DELIVERIES="${MESHGATE_CHAOS_DELIVERIES:-2000}" MESHGATE_CHAOS_CLIENTS="${MESHGATE_CHAOS_CLIENTS:-64}"
export MESHGATE_CHAOS_CHANGES="${MESHGATE_CHAOS_CHANGES:-40}"
export MESHGATE_SYNAPSE_PYTHON="${MESHGATE_SYNAPSE_PYTHON:-$PWD/target/synapse-venv/bin/python}"
cargo test --locked --test it chaos:: -- --nocapture --test-threads 1
