"""The same placement, with an operator told its cluster's QEMU has the SYSREG properties and impl-cpu
(``--vmm-sysreg --vmm-impl-cpu``; no released QEMU has them, so no VM runs here: the test is of what
armcpu promises and how the real scheduler places pods by it). A Graviton3 + Graviton4 pool under
HookSidecar is then safe: VMs boot on every node and migrate to every other one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from armcpu_k8s.kube import Kube
from armcpu_testing.controlplane import ControlPlane
from armcpu_testing.waiting import wait_for
from tests.integration.test_placement import (
    G3,
    G4,
    agrees,
    boots_on,
    cli_guarantee,
    condition,
    cpumodel,
    migrates_to,
    node,
    placing_operator,
    scheduling_admin,
    vm,
    vmi_selector,
)
from tests.operator_harness import OperatorProcess


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    return scheduling_admin(control_plane)


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, admin: Kube) -> Iterator[OperatorProcess]:
    with placing_operator(control_plane, admin, "op-capable", ("--vmm-sysreg", "--vmm-impl-cpu")) as op:
        yield op


def test_hook_sidecar_with_a_capable_qemu_boots_and_migrates_across_graviton3_and_graviton4(
        admin: Kube, operator: OperatorProcess, tmp_path: Path) -> None:
    nodes = ["cap-g3", "cap-g4"]
    node(admin, "cap-g3", "cap", G3)
    node(admin, "cap-g4", "cap", G4)
    cpumodel(admin, "cap", "cap", enforcement="HookSidecar")
    vm(admin, "cap-vm", "cap")
    wait_for(lambda: condition(admin, "cap", "MigrationSafe").get("status") == "True", 30, "MigrationSafe")
    wait_for(lambda: bool(vmi_selector(admin, "cap-vm")), 20, "the VM dressed")
    said = agrees(admin, "cap", nodes, tmp_path, "HookSidecar", "--vmm-sysreg", "--vmm-impl-cpu")
    assert said["reason"] == "ModelSetByVmm" and said["vmm"] == {"sysreg": True, "implCpu": True}
    assert said["startOn"] == said["migrateTo"] == nodes
    assert boots_on(admin, "cap-vm", nodes) == set(nodes)
    assert migrates_to(admin, "cap-vm", "cap-g3", nodes) == {"cap-g4"}
    assert migrates_to(admin, "cap-vm", "cap-g4", nodes) == {"cap-g3"}
    # under Scheduling the same pool is still not safe: the declared QEMU does not change what passthrough carries
    scheduling = cli_guarantee(admin, nodes, "Scheduling", tmp_path, "--vmm-sysreg", "--vmm-impl-cpu")
    assert not scheduling["safe"] and scheduling["reason"] == "NoNodePresentsModel"
