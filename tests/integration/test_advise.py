"""``armcpu advise``'s manifests on the real API server: accepted with the webhooks on, and each
reconciles to the model, the nodes and the guarantee the advisor predicted.

The nodes are the emulated tier's recordings (what real Linux 6.12 and 7.3 kernels reported), two
nodes each, published by the agent's own code, so the nodes carry the agent's labels the manifests
select on. The operator declares the SYSREG-capable QEMU, so the HookSidecar proposals can hold too.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from armcpu.profile import from_dict, to_dict
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from node_agent.publish import publish
from tests.helpers import REPO
from tests.operator_harness import add_node, remove_node, running_operator, wait_for

pytestmark = pytest.mark.integration
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
EMULATED = REPO / "tests" / "fixtures" / "kvm" / "emulated"
KINDS = ("cortex-a76-linux-7.3.4", "neoverse-n1-linux-7.3.4", "max-linux-7.3.4", "max-linux-6.12.117", "neoverse-v1-linux-6.12.117")


def _status(admin: Kube, name: str) -> dict[str, Any]:
    return admin.get(f"{CPUMODELS}/{name}").get("status") or {}


def _as_predicted(admin: Kube, proposal: dict[str, Any]) -> bool:
    status = _status(admin, proposal["name"])
    nodes = status.get("nodes") or {}
    promise = status.get("guarantee") or {}
    return (status.get("fingerprint") == proposal["fingerprint"] and nodes.get("selected") == proposal["nodes"]
            and nodes.get("compatible") == proposal["nodes"] and promise.get("safe") is True
            and promise.get("migrateToCount") == proposal["nodes"])


def test_every_proposed_manifest_is_admitted_and_reconciles_to_the_predicted_model(control_plane: ControlPlane, tmp_path: Path) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    files, names = [], []
    for kind in KINDS:
        recorded = from_dict(json.loads((EMULATED / kind / "profile-kvm.json").read_text()), kind)
        for n in range(2):
            node = f"adv-{kind.split('-linux-')[0]}-{kind.rsplit('-', 1)[1].replace('.', '-')}-{n}"
            profile = dataclasses.replace(recorded, name=node)
            add_node(admin, node, {}, None)
            publish(admin, node, profile)
            path = tmp_path / f"{node}.json"
            path.write_text(json.dumps(to_dict(profile)))
            files.append(str(path))
            names.append(node)
    manifests = tmp_path / "manifests"
    done = subprocess.run([str(REPO / ".venv" / "bin" / "armcpu"), "advise", *files, "-o", "json", "--manifests", str(manifests)],
                          capture_output=True, text=True, check=True)
    proposals = json.loads(done.stdout)["proposals"]
    assert {p["kernelSeries"] for p in proposals} == {"6.12", "7.3"}
    assert any(p["fronts"] == ["sysreg"] for p in proposals), "a pool only a SYSREG-capable QEMU makes safe"
    try:
        with running_operator(control_plane, identity="advise", webhook=True, extra=("--vmm-sysreg", "--vmm-impl-cpu")):
            applied = control_plane.kubectl("apply", "-f", str(manifests))
            assert applied.stdout.count("created") == len(proposals), applied.stdout + applied.stderr
            for p in proposals:
                wait_for(lambda p=p: _as_predicted(admin, p), 60, f"{p['name']} as predicted: {p['explanation']}")
                assert _status(admin, p["name"])["guarantee"]["enforcement"] == ("Scheduling" if "stock" in p["fronts"] else "HookSidecar")
            for p in proposals:
                admin.delete(f"{CPUMODELS}/{p['name']}")
            wait_for(lambda: not any(_exists(admin, p["name"]) for p in proposals), 60, "the proposed CpuModels deleted")
    finally:
        for node in names:
            remove_node(admin, node)


def _exists(admin: Kube, name: str) -> bool:
    try:
        admin.get(f"{CPUMODELS}/{name}")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True
