#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, and the end-to-end tests that
# drive real Chromium through the real poed/poectl binaries against the local Poe double.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

scripts/ensure-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Each end-to-end test runs its own Chromium: two at a time suits a 2-core machine.
cargo test --locked --no-fail-fast -- --test-threads=2
