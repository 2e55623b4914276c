#!/usr/bin/env bash
# Static checks (CI runs them before the tests): ruff lint and format, mypy --strict on src/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy
