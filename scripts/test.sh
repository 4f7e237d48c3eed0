#!/usr/bin/env bash
# Install Athanor with its test tools into .venv (idempotent), then lint, type-check and run the whole test suite.
# Lint and types come first and fail fast: pytest runs only once both are clean.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh
install_athanor "test,export"
if ! .venv/bin/ruff check appliance export scripts tests; then
    echo "test.sh: lint failed (ruff check appliance export scripts tests); tests not run" >&2
    exit 1
fi
if ! .venv/bin/mypy; then
    echo "test.sh: type check failed (mypy, configured in pyproject.toml); tests not run" >&2
    exit 1
fi
exec .venv/bin/python -m pytest "$@"
