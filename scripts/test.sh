#!/usr/bin/env bash
# Install Athanor with its test tools into .venv (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh
install_athanor "test"
exec .venv/bin/python -m pytest "$@"
