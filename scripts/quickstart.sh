#!/usr/bin/env bash
# Install Athanor into .venv (idempotent) and run the main job: the daemon on the embedded
# SmolLM2-135M student answering a real question through its Unix socket.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh
install_athanor ""

home="$(mktemp -d)"
export ATHANOR_HOME="$home"
socket="$home/run/athanor.sock"
.venv/bin/athanor serve &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$home"' EXIT
for _ in $(seq 1 300); do
    [ -S "$socket" ] && .venv/bin/athanor health >/dev/null 2>&1 && break
    kill -0 "$daemon" 2>/dev/null || { echo "daemon exited; see above" >&2; exit 1; }
    sleep 0.2
done
.venv/bin/athanor models
question="${1:-What is the capital of France? Answer in one sentence.}"
echo "Q: $question"
printf 'A: '
.venv/bin/athanor ask "$question" --max-tokens 96 --temperature 0
