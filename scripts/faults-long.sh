#!/usr/bin/env bash
# The long mode of the fault suite (docs/reliability.md), not part of every CI run: the operator
# killed at 100 seeded points during convergence, the API server and etcd restarted 10 times during
# one convergence, leader election with clocks 30 s apart and a slow API server for 10 rounds, and
# 10,000 generated inputs per parser. The safety invariant is checked all along. Extra arguments go
# to pytest. 1 h 28 min on 2 cores shared with the soak (docs/reliability.md).
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
tools=$(bash scripts/setup.sh | tail -n 1)
export "${tools?}"
export PATH="$repo_root/.venv/bin:$PATH"
export ARMCPU_FAULT_SEEDS="${ARMCPU_FAULT_SEEDS:-100}" ARMCPU_RESTARTS="${ARMCPU_RESTARTS:-10}" \
  ARMCPU_CLOCK_SKEW="${ARMCPU_CLOCK_SKEW:-30}" ARMCPU_SLOW_LEADER_ROUNDS="${ARMCPU_SLOW_LEADER_ROUNDS:-10}" \
  ARMCPU_FUZZ_EXAMPLES="${ARMCPU_FUZZ_EXAMPLES:-10000}"
exec pytest -p no:cacheprovider --durations=0 \
  tests/unit/test_parsers_fuzz.py \
  tests/integration/test_leader_clocks.py \
  tests/integration/test_reliability.py::test_api_server_and_etcd_restart_mid_reconcile \
  tests/integration/test_operator_faults.py "$@"
