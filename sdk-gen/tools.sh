# Sourced by sdk-gen/generate, sdk-gen/check and sdk/test.sh (needs $ROOT).
# Finds - or installs from the pinned lists - the tools the SDKs are generated and tested with.

# The pinned versions, read from the files that pin them.
PIN_GRPCIO_TOOLS="$(sed -n 's/^grpcio-tools==\([^[:space:]]*\).*/\1/p' "$ROOT/sdk/python/requirements-dev.txt")"
PIN_PROTO_LOADER="$(sed -n 's/^ *"@grpc\/proto-loader": *"\([^"]*\)".*/\1/p' "$ROOT/sdk/node/package.json")"
if [[ -z "$PIN_GRPCIO_TOOLS" || -z "$PIN_PROTO_LOADER" ]]; then
  echo "sdk-gen: cannot read the pinned generator versions" >&2
  exit 1
fi

# Python interpreter with the pinned dev requirements: $SDK_PYTHON, else <repo>/.venv (created
# when missing).
ensure_python_tools() {
  SDK_PYTHON="${SDK_PYTHON:-$ROOT/.venv/bin/python}"
  if [[ ! -x "$SDK_PYTHON" ]]; then
    echo "sdk-gen: creating $ROOT/.venv from sdk/python/requirements-dev.txt" >&2
    python3 -m venv "$ROOT/.venv"
    SDK_PYTHON="$ROOT/.venv/bin/python"
    "$SDK_PYTHON" -m pip install --quiet --disable-pip-version-check \
      -r "$ROOT/sdk/python/requirements-dev.txt" >&2
  fi
  local have
  have="$("$SDK_PYTHON" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' 2>/dev/null || true)"
  if [[ "$have" != "$PIN_GRPCIO_TOOLS" ]]; then
    echo "sdk-gen: $SDK_PYTHON has grpcio-tools '${have:-none}', the pin is $PIN_GRPCIO_TOOLS;" \
      "run: $SDK_PYTHON -m pip install -r sdk/python/requirements-dev.txt" >&2
    exit 1
  fi
  export SDK_PYTHON
}

# node_modules of sdk/node (installed with `npm ci` from package-lock.json when missing).
ensure_node_tools() {
  local pkg="$ROOT/sdk/node"
  if [[ ! -f "$pkg/node_modules/@grpc/proto-loader/package.json" || ! -d "$pkg/node_modules/@grpc/grpc-js" ]]; then
    echo "sdk-gen: installing sdk/node dependencies (npm ci)" >&2
    (cd "$pkg" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
  local have
  have="$(node -p 'require(process.argv[1]).version' "$pkg/node_modules/@grpc/proto-loader/package.json")"
  if [[ "$have" != "$PIN_PROTO_LOADER" ]]; then
    echo "sdk-gen: sdk/node has @grpc/proto-loader $have, the pin is $PIN_PROTO_LOADER; run: (cd sdk/node && npm ci)" >&2
    exit 1
  fi
  SDK_GEN_TYPES="$pkg/node_modules/@grpc/proto-loader/build/bin/proto-loader-gen-types.js"
  export SDK_GEN_TYPES
}
