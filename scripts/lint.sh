#!/usr/bin/env bash
# Static checks (CI runs them before the tests): ruff lint and format, mypy --strict on src/,
# a relaxed mypy on tests/ and benchmarks/ (pyproject.toml: real type errors, no annotation
# demands; nydus itself is followed silently, the strict run reports on it).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy
.venv/bin/mypy --explicit-package-bases --follow-imports=silent tests benchmarks
