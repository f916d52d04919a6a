#!/usr/bin/env bash
# The offline demo: starts the local Poe double, a real poed with real (headless) Chromium on
# a temporary profile and socket, asks a question with poectl so the answer streams on
# screen, then stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

scripts/ensure-deps.sh
echo "== building (the first build takes a few minutes)"
cargo build --quiet --bins --example poe-double

tmp=$(mktemp -d)
double_pid=""
poed_pid=""
cleanup() {
  [ -n "$poed_pid" ] && kill -TERM "$poed_pid" 2>/dev/null && wait "$poed_pid" 2>/dev/null || true
  [ -n "$double_pid" ] && kill -TERM "$double_pid" 2>/dev/null && wait "$double_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

mkfifo "$tmp/double.out"
target/debug/examples/poe-double --port 0 --chunk-delay-ms 120 >"$tmp/double.out" &
double_pid=$!
exec 3<"$tmp/double.out"
read -r -t 30 -u 3 line || { echo "the Poe double did not start" >&2; exit 1; }
url=${line##* }
echo "== Poe double at $url"

: >"$tmp/empty.toml"
export POED_SOCKET="$tmp/poed.sock"
target/debug/poed --config "$tmp/empty.toml" --profile "$tmp/profile" --base-url "$url" \
  2>"$tmp/poed.log" &
poed_pid=$!
# The socket appears at once; poectl's first request then waits until the daemon is ready.
for _ in $(seq 1 100); do [ -S "$POED_SOCKET" ] && break; kill -0 "$poed_pid" || break; sleep 0.1; done
if ! target/debug/poectl status; then
  echo "poed did not start; its log:" >&2
  cat "$tmp/poed.log" >&2
  exit 1
fi

prompt=${1:-"Hello from the offline demo! Which bot are you?"}
echo
echo "== poectl ask -m gpt-4 \"$prompt\""
target/debug/poectl ask -m gpt-4 "$prompt"
echo
echo "== poectl ask --system \"Answer in one line.\" \"[[unicode]]\""
target/debug/poectl ask --system "Answer in one line." "[[unicode]]"
echo
echo "== done; stopping poed and the double"
