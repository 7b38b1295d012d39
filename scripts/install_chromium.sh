#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/web), when this machine allows it.
#
# Playwright drives that browser through `executable_path`; its own browser download (`playwright install`)
# needs the internet, which test hosts may not have, while the distribution's package mirror usually works.
# Needs root (or passwordless sudo) and apt-get. Anything else: say why, exit 0, and the browser tests skip.
#   bash scripts/install_chromium.sh
set -uo pipefail

say() { echo "install_chromium: $*"; }

for candidate in "${VAE_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [[ -n "$candidate" && -x "$candidate" ]]; then
    say "already installed: $candidate ($("$candidate" --version 2>/dev/null | head -n1))"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  say "skipped: no apt-get here (not Debian/Ubuntu); install Chromium yourself and set VAE_CHROMIUM to it."
  say "the browser tests (pytest -m browser) will skip."
  exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    say "skipped: not root and no passwordless sudo; run as root: apt-get install -y chromium"
    say "the browser tests (pytest -m browser) will skip."
    exit 0
  fi
fi

# Ubuntu's `chromium` package only installs a snap, which does not run in containers; Debian's is a real build.
if [[ -r /etc/os-release ]] && ! grep -qx 'ID=debian' /etc/os-release; then
  say "warning: not Debian; the apt package may be a snap wrapper that cannot run here."
fi

say "installing Debian's chromium with apt-get (a few minutes the first time)…"
export DEBIAN_FRONTEND=noninteractive
if "${SUDO[@]}" apt-get update -q >/dev/null && "${SUDO[@]}" apt-get install -y -q chromium >/dev/null; then
  if chromium --version >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]]; then
    say "installed: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
    exit 0
  fi
fi
say "skipped: apt-get could not install chromium (no package mirror?); the browser tests will skip."
exit 0
