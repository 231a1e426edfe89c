#!/usr/bin/env bash
# The long chaos profile: cycles every fault (node kill -9, Redis SIGSTOP, Redis kill -9 + AOF
# restart, a reconnect storm, slow consumers) against two gateway nodes and a private Redis for
# the given time, then prints the delivery table (also saved under artifacts/).
#
#   scripts/chaos.sh --minutes 15            # release build, storm of 5,000 streams
#   scripts/chaos.sh --minutes 3 --storm 2000 --rate 50 --debug
#
# The short profile (each fault once, about a minute) is a normal test: cargo test --test chaos
# Needs: cargo, redis-server on PATH, an open-files hard limit above the storm size + 500.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

minutes=15
storm=5000
rate=100
build=(--release)
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --storm) storm="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --debug) build=(); shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v redis-server >/dev/null || { echo "redis-server is not on PATH" >&2; exit 1; }
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((storm + 500)) ]; then
  echo "open-files hard limit $hard is below the $((storm + 500)) a storm of $storm needs" >&2
  exit 1
fi

export CARGO_TERM_COLOR=never
export CHAOS_MINUTES="$minutes" CHAOS_STORM="$storm" CHAOS_RATE="$rate"
mkdir -p artifacts
log="artifacts/chaos-$(date +%Y%m%d-%H%M%S).log"
echo "=== building the chaos test (${build[*]:-debug})"
cargo test "${build[@]}" --test chaos --no-run
echo "=== chaos: $minutes min, storm $storm streams, $rate events/s; log: $log"
# The run ends by itself after the last cycle that starts within the time; the timeout only
# guards against a hang.
timeout --kill-after=60 $(( (${minutes%.*} + 30) * 60 )) \
  cargo test "${build[@]}" --test chaos -- --exact chaos_nothing_acknowledged_is_lost --nocapture \
  2>&1 | tee "$log"
