#!/usr/bin/env bash
# Benchmark: the double, a release-built poed with real Chromium, and the two baselines of
# the original provider's method. Prints a Markdown table (see docs/BENCHMARKS.md).
# Usage: scripts/bench.sh [RUNS]   (default 30)
# Run as root, it builds as root and runs the benchmark as the user `nobody`: poed is meant to
# run as an ordinary user, and as root Chromium runs without its sandbox and raises its
# browser and GPU processes above the renderers, which is not what a user gets.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/ensure-deps.sh
runs=${1:-30}
if [ "$(id -u)" != 0 ]; then
  exec cargo bench --bench poed -- "$runs"
fi
built=$(cargo bench --bench poed --no-run 2>&1) || { echo "$built" >&2; exit 1; }
exe=$(echo "$built" | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[ -n "$exe" ] || { echo "bench.sh: cargo did not name the benchmark's executable" >&2; exit 1; }
case "$exe" in /*) ;; *) exe="$PWD/$exe" ;; esac
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
chown nobody "$home"
if ! runuser -u nobody -- test -x "$exe"; then
  echo "bench.sh: the user nobody cannot run $exe (is the checkout private?); running it as root, whose figures differ from a user's" >&2
  "$exe" "$runs"
  exit
fi
echo "bench.sh: running the benchmark as the user nobody (poed runs as an ordinary user)" >&2
runuser -u nobody -- env HOME="$home" XDG_RUNTIME_DIR="$home" "$exe" "$runs"
