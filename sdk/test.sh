#!/usr/bin/env bash
# Tests of the publisher SDKs against a REAL gateway (needs `cargo build` first).
#
#   sdk/test.sh
#
# Sets up what is missing (.venv from sdk/python/requirements-dev.txt, the editable Python package,
# sdk/node/node_modules via `npm ci`), then runs:
#   1. sdk-gen/check          committed generated code == a fresh generation from proto/
#   2. sdk/pack.sh            the distributable packages (Python wheel + sdist, the npm tarballs of
#                             @sse-gateway/publisher and of the browser client @sse-gateway/client)
#                             into artifacts/packages/ ($SDK_ARTIFACTS for the tests)
#   3. pytest sdk/python/tests
#   4. node --test sdk/node/test/*.test.js
# and exits non-zero when any of them fails. Tests 3 and 4 include installing the SDKs into fresh
# virtualenvs / fresh npm apps - as the README says, and from the packages of step 2 - and publishing
# from there (dependencies come from PyPI / the npm registry, through the local caches).
# The gateway binary is $SSE_GATEWAY_BIN, default <repo>/target/debug/sse-gateway.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export SSE_GATEWAY_BIN="${SSE_GATEWAY_BIN:-$ROOT/target/debug/sse-gateway}"
if [[ ! -x "$SSE_GATEWAY_BIN" ]]; then
  echo "sdk/test.sh: no gateway binary at $SSE_GATEWAY_BIN - run 'cargo build' first (or set SSE_GATEWAY_BIN)" >&2
  exit 1
fi

# Set-up (a failure here is fatal).
set -e
# shellcheck source=../sdk-gen/tools.sh
source "$ROOT/sdk-gen/tools.sh"
ensure_python_tools
if ! "$SDK_PYTHON" -c 'import pytest, flask, jwt, build' 2>/dev/null; then
  "$SDK_PYTHON" -m pip install --quiet --disable-pip-version-check -r sdk/python/requirements-dev.txt
fi
pkg_dir="$("$SDK_PYTHON" -c 'import os, sse_gateway_sdk; print(os.path.dirname(sse_gateway_sdk.__file__))' 2>/dev/null || true)"
if [[ "$pkg_dir" != "$ROOT/sdk/python/src/sse_gateway_sdk" ]]; then
  # The venv already has setuptools (a grpcio-tools dependency): no build isolation, no download.
  "$SDK_PYTHON" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e sdk/python
fi
ensure_node_tools
set +e

failed=()
step() {
  local name="$1"; shift
  echo "=== sdk: $name"
  local t0=$SECONDS
  if ! "$@"; then
    failed+=("$name")
  fi
  echo "=== sdk: $name: $((SECONDS - t0)) s"
}

step "sdk-gen/check" "$ROOT/sdk-gen/check"
export SDK_ARTIFACTS="$ROOT/artifacts/packages"
rm -rf "$SDK_ARTIFACTS"
step "packages (sdk/pack.sh)" "$ROOT/sdk/pack.sh" "$SDK_ARTIFACTS"
step "python (pytest)" "$SDK_PYTHON" -m pytest -p no:cacheprovider -q sdk/python/tests
step "node (node --test)" bash -c 'cd sdk/node && node --test test/*.test.js'

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "sdk/test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "sdk/test.sh: all SDK checks passed"
