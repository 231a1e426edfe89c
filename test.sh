#!/usr/bin/env bash
# The whole test suite: Rust (unit + integration, incl. Redis), publisher SDKs (Python, Node),
# and the browser client (unit + headless Chromium end-to-end).
#
#   ./test.sh
#
# Needs: cargo, python3, node/npm; Redis at 127.0.0.1:6379 (started here when nothing answers);
# Chromium at /usr/bin/chromium (installed by web/test.sh with apt-get when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR=never

# Redis for the multi-node tests.
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "=== starting redis-server on 127.0.0.1:6379"
  if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

echo "=== rust: cargo build + cargo test"
cargo build --bins
cargo test --all-targets

echo "=== loadgen --quick (every benchmark scenario runs; no figures checked)"
cargo run -q --bin loadgen -- --quick

echo "=== publisher SDKs"
bash sdk/test.sh

echo "=== browser client"
bash web/test.sh

echo "=== all test suites passed"
