#!/usr/bin/env bash
# Debian packages the test suite drives as ordinary processes, never as services:
#   nginx                 the load-balancer test (tests/test_nginx.py, a config from `bge-triton nginx-config`)
#   chromium              the web page's browser test (tests/test_web_ui.py: Playwright from PyPI with
#                         executable_path=/usr/bin/chromium; `playwright install` is never run)
#   fonts-wqy-microhei    Chinese text in the page's screenshots instead of boxes
#   redis-server          the proxy's shared vector cache (tests/test_vector_cache.py starts one on loopback)
# Usage: install_debian_packages.sh PACKAGE...   Idempotent: installs only the missing ones, with apt-get as
# root; otherwise prints the command (the tests that need them then skip). policy-rc.d keeps dpkg from starting
# any service (nginx would take ports 80/443).
set -euo pipefail
log() { echo "install_debian_packages: $*" >&2; }
missing=()
for package in "$@"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "already installed: $*"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  log "missing ${missing[*]}; install with: sudo apt-get install -y --no-install-recommends ${missing[*]}"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log "installing ${missing[*]} with apt-get"
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "ok: ${missing[*]}"
