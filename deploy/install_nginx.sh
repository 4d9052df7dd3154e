#!/usr/bin/env bash
# Debian's nginx for the load-balancer test (tests/test_nginx.py) and the container-free topology.
# Idempotent; installs with apt-get as root, otherwise prints the command (the nginx tests then skip).
# nginx is only installed, never started as a system service: `bge-triton nginx-config` renders a config
# that runs as an ordinary process (`nginx -e stderr -c FILE -g 'daemon off;'`).
set -euo pipefail
log() { echo "install_nginx: $*" >&2; }
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  log "nginx already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  log "nginx is missing; install it with: sudo apt-get install -y nginx-light (or your distribution's nginx)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log "installing nginx with apt-get"
# policy-rc.d keeps dpkg from starting the system service on ports 80/443.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
if ! apt-get install -y -qq --no-install-recommends nginx >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx >/dev/null
fi
log "ok: $(/usr/sbin/nginx -v 2>&1)"
