#!/usr/bin/env bash
# Screenshots of the built documentation site in a real browser (headless
# Chromium from Debian's packages), to check that it renders: navigation,
# code tabs, admonitions and pictures. CI does not run this.
#
#   bash scripts/docs_screenshots.sh [OUT_DIR]     # default: build/screenshots
#
# It builds the site (mkdocs build --strict), serves it on a free loopback
# port, and writes one PNG per page below. Chromium runs with a fresh
# profile, no network besides loopback, and is installed with apt-get when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-build/screenshots}"
PAGES=(  # name:path:height in CSS pixels
  "home::2900"                     # what it is, quick start tabs, demo timeline
  "faststream:faststream/:1800"    # a guide page: NATS | Redis tabs
  "tasks:tasks/:2600"              # the acquisition-order picture
  "comparison:comparison/:2400"    # wide tables, admonitions
  "brokers:broker-integration/:2400"  # mermaid sequence diagrams, the timeline
  "reference:reference/task/:1800"    # the API reference from the docstrings
)
WIDTH="${WIDTH:-1280}"

if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium not found: installing it from Debian's packages" >&2
  apt-get install -y chromium >/dev/null
fi

NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet

PORT="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
.venv/bin/python -m http.server "$PORT" --bind 127.0.0.1 --directory build/site \
  >/dev/null 2>&1 &
SERVER_PID=$!
PROFILE="$(mktemp -d)"
cleanup() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$PROFILE"
}
trap cleanup EXIT

for _ in $(seq 50); do
  if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" 2>/dev/null; then
    break
  fi
  sleep 0.1
done

mkdir -p "$OUT"
for page in "${PAGES[@]}"; do
  IFS=: read -r name path height <<<"$page"
  rm -rf "$PROFILE" && mkdir -p "$PROFILE"
  timeout 60 chromium \
    --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$PROFILE" --hide-scrollbars \
    --window-size="$WIDTH,$height" --virtual-time-budget=5000 \
    --screenshot="$OUT/$name.png" "http://127.0.0.1:$PORT/$path" \
    >/dev/null 2>&1
  echo "$OUT/$name.png  <- /$path"
done
