#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what the tests need, check
# formatting and lints, then run every unit and integration test (real
# redis-server, real processes; see README "Tests").
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
