#!/usr/bin/env bash
# The main job on embedded data: a real local control plane, simulated arm64 nodes whose real
# agents replay recorded Graviton3/Graviton4 KVM views, the real operator, and the examples.
# Prints what a user would look at and stops everything; `--keep` leaves it running until Ctrl-C.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
tools=$(bash scripts/setup.sh | tail -n 1)
export "${tools?}"
export PATH="$repo_root/.venv/bin:$PATH"
exec python -m armcpu_testing.demo "$@"
