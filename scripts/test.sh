#!/usr/bin/env bash
# Run every check and test: lint (ruff), types (mypy, strict on the core), layer contract
# (import-linter), then pytest (unit tests and integration tests on a real local control plane).
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
tools=$(bash scripts/setup.sh | tail -n 1)
export "${tools?}"
export PATH="$repo_root/.venv/bin:$PATH"
ruff check .
mypy armcpu armcpu_cli armcpu_testing armcpu_k8s node_agent operator/armcpu_operator benchmarks
lint-imports
pytest "$@"
