#!/usr/bin/env bash
# Regenerates the EventStoreDB stand-in's gRPC server code (tests/it/esdb/generated/) from the
# .proto files of the `eventstore` crate in Cargo.lock. Needs protoc (Debian: protobuf-compiler).
# Run it after upgrading the crate; the generated files are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
print(next(p["manifest_path"] for p in meta["packages"] if p["name"] == "eventstore"))')
protos="$(dirname "$manifest")/protos"
out="$PWD/tests/it/esdb/generated"
rm -rf "$out"
CARGO_TARGET_DIR="$PWD/target" cargo run --quiet --manifest-path tests/esdb-codegen/Cargo.toml -- "$protos" "$out"
echo "generated from $protos:"; ls "$out"
