#!/usr/bin/env bash
# Installs poed and poectl into ~/.cargo/bin and the systemd user units, then enables them.
#   scripts/install-service.sh            # socket activation: poed starts on first use
#   scripts/install-service.sh --now      # start poed right away (poed.service)
#   scripts/install-service.sh --uninstall
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
units="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"

if [ "${1:-}" = "--uninstall" ]; then
  systemctl --user disable --now poed.socket poed.service 2>/dev/null || true
  rm -f "$units/poed.service" "$units/poed.socket"
  systemctl --user daemon-reload
  echo "units removed (binaries stay in ~/.cargo/bin; the profile stays in ~/.local/share/poed)"
  exit 0
fi

scripts/ensure-deps.sh
cargo install --locked --path .
mkdir -p "$units"
install -m 0644 systemd/poed.service systemd/poed.socket "$units/"
systemctl --user daemon-reload
if [ "${1:-}" = "--now" ]; then
  systemctl --user enable --now poed.service
else
  systemctl --user enable --now poed.socket
fi
echo "installed. Sign the profile in (README, \"Signing in\"), then: poectl ask \"Hello\""
