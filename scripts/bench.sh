#!/usr/bin/env bash
# Benchmark: the double, a release-built poed with real Chromium, and the two baselines of
# the original provider's method. Prints a Markdown table (see docs/BENCHMARKS.md).
# Usage: scripts/bench.sh [RUNS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/ensure-deps.sh
cargo bench --bench poed -- "${1:-30}"
