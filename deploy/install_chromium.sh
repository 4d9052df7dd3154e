#!/usr/bin/env bash
# Debian's chromium (and a small CJK font) for the web page's browser test (tests/test_web_ui.py), which drives
# it with Playwright from PyPI at /usr/bin/chromium: `playwright install` (a browser download) is never run.
# Idempotent; installs with apt-get as root, otherwise prints the command (the browser tests then skip).
# Only packages are installed: no service is started (policy-rc.d keeps dpkg from starting any).
set -euo pipefail
log() { echo "install_chromium: $*" >&2; }
packages=(chromium fonts-wqy-microhei)  # the font: Chinese text in the page's screenshots instead of boxes
if [ -x /usr/bin/chromium ] && dpkg -s fonts-wqy-microhei >/dev/null 2>&1; then
  log "chromium already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  log "chromium is missing; install it with: sudo apt-get install -y --no-install-recommends ${packages[*]}"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log "installing ${packages[*]} with apt-get"
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
if ! apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
log "ok: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
