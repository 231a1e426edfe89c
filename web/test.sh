#!/usr/bin/env bash
# Browser client (@sse-gateway/client): install what is missing, type-check, unit tests, build,
# check the committed demo bundle is current, then end-to-end tests in headless Chromium against
# a real gateway process (target/debug/sse-gateway, or $SSE_GATEWAY_BIN: build it first).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"
WEB="$(pwd)"
REPO="$(cd .. && pwd)"
export SSE_GATEWAY_BIN="${SSE_GATEWAY_BIN:-$REPO/target/debug/sse-gateway}"

step() { printf '\n== web: %s\n' "$*"; }

# ---- dependencies ---------------------------------------------------------------------------
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "npm ci"
  npm ci --no-audit --no-fund
fi
if [ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]; then
  step "installing Debian's chromium"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# Redis for the e2e test of a gateway restart on the Redis broker (started when nothing answers).
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  step "starting redis-server on 127.0.0.1:6379"
  if ! command -v redis-server >/dev/null; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

TMP="$WEB/.e2e-tmp"
rm -rf "$TMP"
mkdir -p "$TMP"

# ---- static checks and unit tests -----------------------------------------------------------
step "typecheck"
npx tsc -p tsconfig.json --noEmit

step "unit tests (vitest)"
npx vitest run --reporter=default --reporter=json --outputFile="$TMP/vitest.json"

step "build (tsc, with type declarations)"
npm run --silent build
test -f dist/index.d.ts && test -f dist/react/index.d.ts
node --input-type=module -e "
  const core = await import('@sse-gateway/client');
  const react = await import('@sse-gateway/client/react');
  for (const n of ['SSEClient', 'getSharedClient', 'latest']) if (typeof core[n] !== 'function') throw new Error('core export missing: ' + n);
  for (const n of ['SSEProvider', 'useSSE', 'useSSESubscription', 'useSSELatest', 'withSSE']) if (typeof react[n] !== 'function') throw new Error('react export missing: ' + n);
  if (core.SSEClient !== react.SSEClient) throw new Error('the two entry points load two copies of the core');
  console.log('package entry points ok');
"

step "demo-dist is current"
node demo/build.mjs --out "$TMP/demo-dist" >/dev/null
for f in index.html demo.js demo.css; do
  if ! cmp -s "$TMP/demo-dist/$f" "demo-dist/$f"; then
    echo "web/demo-dist/$f is stale: run 'npm run build:demo' in web/ and commit web/demo-dist" >&2
    exit 1
  fi
done
echo "ok"

# ---- end-to-end -----------------------------------------------------------------------------
step "e2e (headless Chromium, real gateway: $SSE_GATEWAY_BIN)"
if [ ! -x "$SSE_GATEWAY_BIN" ]; then
  echo "gateway binary not found at $SSE_GATEWAY_BIN: run 'cargo build' first (or set SSE_GATEWAY_BIN)" >&2
  exit 1
fi
set +e
node --test --test-concurrency=1 --test-force-exit --test-timeout=120000 --test-reporter=tap e2e/ | tee "$TMP/e2e.tap"
E2E=${PIPESTATUS[0]}
set -e

# ---- summary --------------------------------------------------------------------------------
node -e '
const fs = require("fs");
const v = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
const tap = fs.readFileSync(process.argv[2], "utf8");
const n = (re) => Number((tap.match(re) || [])[1] || 0);
const passed = v.numPassedTests + n(/^# pass (\d+)/m);
const failed = v.numFailedTests + n(/^# fail (\d+)/m) + n(/^# cancelled (\d+)/m);
console.log(`\nweb: ${passed} passed, ${failed} failed`);
' "$TMP/vitest.json" "$TMP/e2e.tap"
exit "$E2E"
