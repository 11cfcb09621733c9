#!/usr/bin/env bash
# Installs the official MCP conformance harness and the Python SDK's everything-server
# into /work/main/.conformance/ (idempotent; npm registry and PyPI only).
#
#   .conformance/node22/                 Node 22 from the npm package node@22 (system node 20 is too old)
#   .conformance/npm/                    conf-0116 = @modelcontextprotocol/conformance@0.1.16
#                                        conf-a11  = @modelcontextprotocol/conformance@0.2.0-alpha.11
#   .conformance/sdist/mcp-2.3.0/        the PyPI sdist of mcp==2.3.0
#   .conformance/py-everything/          mcp_everything_server/ + conformance_client.py + baselines/
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
W="$ROOT/.conformance"
MCP_VERSION=2.3.0
NODE_SPEC="node@22"
C0116="0.1.16"
CA11="0.2.0-alpha.11"
mkdir -p "$W"

# Python that runs pip download (any pip; the server itself runs with the project venv).
PIP_PY="${PIP_PY:-python3}"
VENV_PY="$ROOT/.venv/bin/python"

log() { printf '[conformance-setup] %s\n' "$*" >&2; }

# 1. Node 22
N22="$W/node22/node_modules/.bin/node"
if [[ -x "$N22" ]] && "$N22" --version | grep -q '^v22\.'; then
  log "node 22 present: $("$N22" --version)"
else
  log "installing $NODE_SPEC"
  mkdir -p "$W/node22"
  (cd "$W/node22" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund "$NODE_SPEC" >/dev/null)
  "$N22" --version | grep -q '^v22\.' || { log "node 22 install failed"; exit 1; }
fi

# 2. The harness, two versions side by side (npm aliases)
have_harness() {
  local dir="$W/npm/node_modules/$1" want="$2"
  [[ -f "$dir/dist/index.js" ]] && grep -q "\"version\": \"$want\"" "$dir/package.json"
}
if have_harness conf-0116 "$C0116" && have_harness conf-a11 "$CA11"; then
  log "harness $C0116 and $CA11 present"
else
  log "installing conformance $C0116 and $CA11"
  mkdir -p "$W/npm"
  (cd "$W/npm" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund \
      "conf-0116@npm:@modelcontextprotocol/conformance@$C0116" \
      "conf-a11@npm:@modelcontextprotocol/conformance@$CA11" >/dev/null)
  have_harness conf-0116 "$C0116" && have_harness conf-a11 "$CA11" || { log "harness install failed"; exit 1; }
fi

# 3. The mcp sdist: everything-server, conformance client, expected-failures baselines
SD="$W/sdist/mcp-$MCP_VERSION"
if [[ ! -d "$SD/examples/servers/everything-server" ]]; then
  log "downloading the mcp==$MCP_VERSION sdist from PyPI"
  mkdir -p "$W/sdist"
  "$PIP_PY" -m pip download "mcp==$MCP_VERSION" --no-binary :all: --no-deps -d "$W/sdist" >/dev/null
  tar -xzf "$W/sdist/mcp-$MCP_VERSION.tar.gz" -C "$W/sdist"
fi
PE="$W/py-everything"
if [[ ! -f "$PE/.done-$MCP_VERSION" ]]; then
  log "laying out $PE"
  rm -rf "$PE" && mkdir -p "$PE/baselines"
  cp -r "$SD/examples/servers/everything-server/mcp_everything_server" "$PE/"
  cp "$SD/.github/actions/conformance/client.py" "$PE/conformance_client.py"
  cp "$SD"/.github/actions/conformance/expected-failures*.yml "$PE/baselines/"
  touch "$PE/.done-$MCP_VERSION"
fi

# 4. The everything-server's own venv: the project's locked packages, but uvicorn's default HTTP
#    parser (h11), as a server installed from PyPI gets. (The edge uses httptools, which keeps the
#    whitespace around header values that h11 strips; the edge strips it itself, the SDK's server
#    does not, and the baseline must be the SDK's server as people run it.)
EV="$PE/venv"
if [[ ! -x "$VENV_PY" ]]; then
  log "warning: $VENV_PY missing; run 'uv sync' first"
elif [[ ! -f "$EV/.done-$(sha1sum "$ROOT/uv.lock" | cut -c1-12)" ]]; then
  log "making the everything-server's venv at $EV"
  rm -rf "$EV"
  uv venv -q --python "$VENV_PY" "$EV"
  (cd "$ROOT" && uv export -q --frozen --no-hashes --no-emit-workspace --no-dev) | grep -v '^httptools' > "$PE/requirements.txt"
  uv pip install -q --python "$EV/bin/python" -r "$PE/requirements.txt"
  (cd "$PE" && "$EV/bin/python" -c "import mcp_everything_server.server") \
    || { log "everything-server does not import in $EV"; exit 1; }
  touch "$EV/.done-$(sha1sum "$ROOT/uv.lock" | cut -c1-12)"
fi

grep -qxF '.conformance/' "$ROOT/.gitignore" 2>/dev/null || echo '.conformance/' >> "$ROOT/.gitignore"
log "ready: node $("$N22" --version), harness $C0116 + $CA11, everything-server at $PE"
