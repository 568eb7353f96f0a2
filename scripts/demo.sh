#!/usr/bin/env bash
# The main job on embedded data: start a real local control plane with armcpu's and KubeVirt's
# CRDs, show what it serves, and compute the common model of the recorded Graviton3 and
# Graviton4 KVM guest views with the armcpu CLI. Leaves nothing running.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
tools=$(bash scripts/setup.sh | tail -n 1)
export "${tools?}"
export PATH="$repo_root/.venv/bin:$PATH"
armcpu-controlplane --check
data=examples/profiles
echo "== armcpu baseline: Graviton3 + Graviton4 (KVM guest views, host Linux 6.18)"
armcpu baseline --assume-kvm "$data/graviton3-kvm-6.18.json" "$data/graviton4-kvm-6.18.json" || true
