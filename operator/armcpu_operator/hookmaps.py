"""The ConfigMaps that carry armcpu's domain hook script (:mod:`armcpu_k8s.domain_hook`) into VM
namespaces: KubeVirt's hook sidecar reads the script from a ConfigMap in the VM's own namespace.

One per namespace that holds a VM whose template armcpu gave the hook, or a running VM started with it
(a migration target pod mounts the ConfigMap again); removed when the last of them goes. Only
ConfigMaps with armcpu's labels are ever listed, changed or deleted. The list is cached and refreshed
once per resync period, so a reconcile that changes nothing neither lists nor writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armcpu_k8s import domain_hook
from armcpu_k8s.kube import ApiError, Kube
from armcpu_operator import vms
from armcpu_operator.runtime import RUNTIME
from armcpu_operator.state import State

log = logging.getLogger("armcpu.operator")
SCRIPT = Path(domain_hook.__file__).read_text()
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


def path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps/{vms.HOOK_CONFIGMAP}"


def held_namespaces(kube: Kube) -> dict[str, str]:
    """Namespace -> script of every domain hook ConfigMap armcpu holds (by its labels)."""
    found = kube.request("GET", "/api/v1/configmaps", query={"labelSelector": SELECTOR})
    return {item["metadata"]["namespace"]: (item.get("data") or {}).get(vms.HOOK_KEY, "")
            for item in found.get("items") or [] if item["metadata"]["name"] == vms.HOOK_CONFIGMAP}


def apply(kube: Kube, changes: Changes, held: dict[str, str]) -> bool:
    """Send ``changes``; ``held`` follows what now exists. False when something must be retried."""
    ok = True
    for ns in changes.create:
        try:
            kube.create(f"/api/v1/namespaces/{ns}/configmaps", configmap(ns, SCRIPT))
        except ApiError as exc:
            if exc.status == 409:  # not ours (ours carry LABELS and were listed): never overwrite it
                log.error("a ConfigMap armcpu does not own holds the domain hook's name; VMs there cannot start with the hook",
                          extra={"namespace": ns, "configmap": vms.HOOK_CONFIGMAP})
            else:
                log.error("creating the domain hook ConfigMap failed", extra={"namespace": ns, "error": str(exc)})
                ok = False
            continue
        held[ns] = SCRIPT
    for ns in changes.update:
        try:
            kube.merge_patch(path(ns), {"data": {vms.HOOK_KEY: SCRIPT}})
            held[ns] = SCRIPT
        except ApiError as exc:
            log.error("updating the domain hook ConfigMap failed", extra={"namespace": ns, "error": str(exc)})
            ok = False
    for ns in changes.delete:
        try:
            kube.delete(path(ns))
        except ApiError as exc:
            if exc.status != 404:
                log.error("deleting the domain hook ConfigMap failed", extra={"namespace": ns, "error": str(exc)})
                ok = False
                continue
        held.pop(ns, None)
    return ok


async def sync(kube: Kube, state: State, vms_now: Mapping[tuple[str, str], Mapping[str, Any]],
               hooked_vmis: Iterable[tuple[str, str]]) -> bool:
    """Bring the hook ConfigMaps in line with the VMs; False when something must be retried."""
    needed = needed_namespaces(vms_now, hooked_vmis)
    stale = time.monotonic() - state.hook_configmaps_listed > RUNTIME.resync_seconds
    if state.hook_configmaps is None or stale:
        try:
            state.hook_configmaps = await asyncio.to_thread(held_namespaces, kube)
        except (ApiError, OSError) as exc:
            log.error("listing the domain hook ConfigMaps failed", extra={"error": str(exc)})
            return False
        state.hook_configmaps_listed = time.monotonic()
    changes = plan(needed, state.hook_configmaps, SCRIPT)
    if changes == Changes():
        return True
    try:
        ok = await asyncio.to_thread(apply, kube, changes, state.hook_configmaps)
    except OSError as exc:  # no answer: what exists is unknown until listed again
        log.error("the domain hook ConfigMaps could not be brought in line", extra={"error": str(exc)})
        ok = False
    if not ok:
        state.hook_configmaps = None  # list again on the retry
    log.info("domain hook ConfigMaps", extra={"namespaces_created": changes.create, "namespaces_updated": changes.update,
                                              "namespaces_deleted": changes.delete})
    return ok
