"""Which namespaces need armcpu's domain hook ConfigMap, and what to create, rewrite or delete
(:mod:`armcpu_operator.hookmaps` lists and writes them).

KubeVirt's hook sidecar reads the script from a ConfigMap in the VM's own namespace: one is needed
where a VM's template carries armcpu's hook, or where a running VM was started with it (a migration
target pod mounts the ConfigMap again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from armcpu_operator.planning import vms

LABELS = {"app.kubernetes.io/managed-by": "armcpu", "app.kubernetes.io/component": "domain-hook"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())


@dataclass(frozen=True)
class Changes:
    create: tuple[str, ...] = ()
    update: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()


def needed_namespaces(vms_now: Mapping[tuple[str, str], Mapping[str, Any]], hooked_vmis: Iterable[tuple[str, str]]) -> set[str]:
    return {ns for (ns, _), vm in vms_now.items() if vms.uses_hook(vm)} | {ns for ns, _ in hooked_vmis}


def plan(needed: set[str], existing: Mapping[str, str], script: str) -> Changes:
    """What to create, rewrite (the operator was upgraded and the script changed) and delete."""
    return Changes(
        create=tuple(sorted(needed - set(existing))),
        update=tuple(sorted(ns for ns in needed & set(existing) if existing[ns] != script)),
        delete=tuple(sorted(set(existing) - needed)),
    )


def configmap(namespace: str, script: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": vms.HOOK_CONFIGMAP, "namespace": namespace, "labels": dict(LABELS)},
            "data": {vms.HOOK_KEY: script}}
