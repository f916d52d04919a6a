#!/usr/bin/env bash
# Installs what poed's tests and demo need on a fresh Debian machine: Chromium, Xvfb (the
# visible-window sign-in test), curl and python3-venv (the HTTP tests' real clients), socat
# (the protocol examples), openssl (a TLS site with an untrusted certificate in a test). Does nothing when they are present.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1; then
  echo "installing ${missing[*]} with sudo ..." >&2
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing: ${missing[*]}; install them (Debian: apt-get install -y ${missing[*]})" >&2
  exit 1
fi
