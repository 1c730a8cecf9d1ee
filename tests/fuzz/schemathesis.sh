#!/usr/bin/env bash
# Fuzz a live procgate from its own OpenAPI document: no 5xx, no schema violations, no
# hangs (each request has a timeout). Seeded and bounded, so a run is repeatable.
# Usage: tests/fuzz/schemathesis.sh [extra schemathesis options]
# tests/test_schemathesis.py runs it as part of the test suite, with $PYTHON set to the
# interpreter that runs the tests.
set -euo pipefail
python="${PYTHON:-python3}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cd "$work"
"$python" -m procgate serve --config "$here/procgate.toml" --host 127.0.0.1 --port "$port" --workers 2 \
    > server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    "$python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" \
        2> /dev/null && break
    sleep 0.1
done
# use_after_free is left out on purpose: DELETE on a running job cancels it (202) and the
# job stays readable; only a second DELETE removes it (204).
"$python" -m schemathesis.cli run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer fuzz-admin-token" \
    --checks all --exclude-checks use_after_free \
    --max-examples "${MAX_EXAMPLES:-60}" --seed "${SEED:-20261124}" \
    --request-timeout 10 --workers 1 "$@"
if grep -q Traceback server.log; then
    echo "the server logged a traceback:" >&2
    cat server.log >&2
    exit 1
fi
