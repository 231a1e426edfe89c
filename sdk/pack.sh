#!/usr/bin/env bash
# Builds the distributable client packages, as a release would ship them:
#
#   sse_gateway_sdk-<version>-py3-none-any.whl, sse_gateway_sdk-<version>.tar.gz
#                                  sdk/python, `python -m build` (the wheel is built from the sdist)
#   sse-gateway-publisher-<version>.tgz   sdk/node, `npm pack`
#   sse-gateway-client-<version>.tgz      web/ (browser client), built with its `npm run build` and
#                                         `npm pack`ed in a temporary copy, so web/ is left as it is
#
# Usage: sdk/pack.sh OUT [python] [node] [web]      (no names: all three)
#
# OUT is created when missing; files of the same name in it are replaced. Uses the pinned Python
# tools (.venv, or $SDK_PYTHON) and installs web/node_modules with `npm ci` when missing.
# sdk/test.sh builds them into artifacts/packages/ and installs each one into a fresh virtualenv or
# a fresh npm app.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 || "$1" == -* ]]; then
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
shift
WHAT=("$@")
[[ ${#WHAT[@]} -gt 0 ]] || WHAT=(python node web)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# The files of a folder that a fresh clone has (tracked, plus new files not ignored), copied to DEST:
# nothing ignored (node_modules, build/, *.egg-info, dist/) can leak into a package.
copy_clean() {
  local dir="$1" dest="$2"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- "$dir") |
    (cd "$ROOT" && xargs -0 -r cp --parents -t "$dest")
}

for what in "${WHAT[@]}"; do
  case "$what" in
    python)
      # shellcheck source=../sdk-gen/tools.sh
      source "$ROOT/sdk-gen/tools.sh"
      ensure_python_tools
      copy_clean sdk/python "$TMP"
      "$SDK_PYTHON" -m build --outdir "$OUT" "$TMP/sdk/python" >"$TMP/python-build.log" 2>&1 ||
        { cat "$TMP/python-build.log" >&2; echo "sdk/pack.sh: python -m build failed" >&2; exit 1; }
      ;;
    node)
      (cd "$ROOT/sdk/node" && npm pack --silent --pack-destination "$OUT" >/dev/null)
      ;;
    web)
      if [[ ! -f "$ROOT/web/node_modules/.package-lock.json" || "$ROOT/web/package-lock.json" -nt "$ROOT/web/node_modules/.package-lock.json" ]]; then
        echo "sdk/pack.sh: installing web/ dependencies (npm ci)" >&2
        (cd "$ROOT/web" && npm ci --no-audit --no-fund --loglevel=error >&2)
      fi
      copy_clean web "$TMP"
      ln -s "$ROOT/web/node_modules" "$TMP/web/node_modules"
      (cd "$TMP/web" && npm run --silent build && npm pack --silent --pack-destination "$OUT" >/dev/null)
      ;;
    *)
      echo "sdk/pack.sh: unknown package '$what' (python, node, web)" >&2
      exit 2
      ;;
  esac
done
ls -1 "$OUT"
