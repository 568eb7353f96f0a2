"""Which domain-hook ConfigMaps the operator keeps: exactly the namespaces that need one."""

from __future__ import annotations

from armcpu_operator import hookmaps
from armcpu_operator.planning import hooks, vms
from armcpu_operator.planning.vms import Desired


def hooked_vm(namespace: str) -> dict[str, object]:
    plain = {"metadata": {"name": "v", "namespace": namespace}, "spec": {"template": {"spec": {}}}}
    return vms.target(plain, Desired("m", 1, "f", qemu_cpu="host,SYSREG_X_Y=0"))


def test_needed_namespaces_come_from_hooked_vms_and_running_vms_started_with_the_hook() -> None:
    plain = {"metadata": {"name": "v"}, "spec": {"template": {"spec": {}}}}
    view = {("a", "v"): hooked_vm("a"), ("b", "v"): plain, ("c", "v"): vms.target(plain, Desired("m", 1, "f"))}
    assert hooks.needed_namespaces(view, [("d", "running-after-deselection")]) == {"a", "d"}


def test_plan_creates_rewrites_and_deletes_only_what_differs() -> None:
    existing = {"a": hookmaps.SCRIPT, "b": "old script", "c": hookmaps.SCRIPT}
    changes = hooks.plan({"a", "b", "d"}, existing, hookmaps.SCRIPT)
    assert changes == hooks.Changes(create=("d",), update=("b",), delete=("c",))
    assert hooks.plan({"a"}, {"a": hookmaps.SCRIPT}, hookmaps.SCRIPT) == hooks.Changes()


def test_the_configmap_carries_the_hook_source_under_armcpus_labels() -> None:
    body = hooks.configmap("web", hookmaps.SCRIPT)
    assert body["metadata"]["labels"] == hooks.LABELS and body["metadata"]["name"] == vms.HOOK_CONFIGMAP
    assert body["data"][vms.HOOK_KEY].startswith("#!/usr/bin/env python3")
    assert vms.HOOK_ENTRY["configMap"] == {"name": vms.HOOK_CONFIGMAP, "key": vms.HOOK_KEY, "hookPath": "/usr/bin/onDefineDomain"}
