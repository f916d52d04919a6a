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
echo "== cargo test (the double follows today's site, its 2025 mode)"
# Each end-to-end test runs its own Chromium: two at a time suits a 2-core machine.
status=0
cargo test --locked --no-fail-fast -- --test-threads=2 || status=$?
echo "== end-to-end tests against the 2023 picture of the site"
# The same binaries (no rebuild); the suites whose tests do not pin a mode.
POE_DOUBLE_MODE=2023 cargo test --locked --no-fail-fast \
  --test e2e_core --test e2e_lifecycle --test e2e_concurrency --test e2e_resilience \
  -- --test-threads=2 || status=$?
POE_DOUBLE_MODE=2023 cargo test --locked --no-fail-fast --test e2e_site \
  -- --test-threads=2 lost_updates a_signed_out || status=$?
exit $status
