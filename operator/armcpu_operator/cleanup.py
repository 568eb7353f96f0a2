"""``armcpu-operator cleanup``: take every armcpu label off every Node and restore every VM armcpu
patched (the chart's pre-delete hook).

Uninstalling armcpu must leave Nodes and VirtualMachines as they were: the agent's ``armcpu.io/``
and ``feature.armcpu.io/`` keys and the operator's ``cpumodel.armcpu.io/`` keys go, and each VM
loses exactly what its ``armcpu.io/applied`` record says armcpu added (otherwise its nodeSelector
would name labels no node carries any more). The domain hook ConfigMaps go too, except in namespaces
where a running VM was started with the hook (its next migration target mounts the ConfigMap again; it
is left for its owner, and named in the log). Nothing else is touched. Idempotent: a second run finds
nothing and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from armcpu_k8s import labels
from armcpu_k8s.kube import GONE, ApiError, Kube, outcome
from armcpu_k8s.resources import NODES, VMIS, VMS
from armcpu_operator import hookmaps
from armcpu_operator.planning import hooks, vms

log = logging.getLogger("armcpu.cleanup")


def plan(nodes: list[dict[str, object]]) -> dict[str, dict[str, None]]:
    out: dict[str, dict[str, None]] = {}
    for node in nodes:
        meta = node.get("metadata") or {}
        assert isinstance(meta, dict)
        keys = [k for k in (meta.get("labels") or {}) if labels.is_agent_key(k) or labels.is_model_key(k)]
        if keys:
            out[str(meta["name"])] = dict.fromkeys(keys)
    return out


def _pages(kube: Kube, path: str) -> Iterator[list[dict[str, Any]]]:
    continue_token = ""
    while True:
        query = {"limit": "500", **({"continue": continue_token} if continue_token else {})}
        page = kube.request("GET", path, query=query)
        yield page.get("items", [])
        continue_token = (page.get("metadata") or {}).get("continue") or ""
        if not continue_token:
            return


def _remove_hook_configmaps(kube: Kube) -> int:
    in_use = {vmi["metadata"]["namespace"] for items in _pages(kube, VMIS.collection())
              for vmi in items if vms.HOOK_ANNOTATION in (vmi["metadata"].get("annotations") or {})}
    held = hookmaps.held_namespaces(kube)
    for namespace in sorted(in_use & set(held)):
        log.warning("domain hook ConfigMap kept: running VMs were started with it", extra={"namespace": namespace})
    unused = tuple(sorted(set(held) - in_use))
    ok = hookmaps.apply(kube, hooks.Changes(delete=unused), held)
    if unused:
        log.info("domain hook ConfigMaps removed", extra={"namespaces": [ns for ns in unused if ns not in held]})
    return 0 if ok else 1


def run(kube: Kube) -> int:
    failed = 0
    for items in _pages(kube, VMS.collection()):
        for vm in items:
            ops = vms.patch(vm, None) if vms.uses(vm) else []
            if not ops:
                continue
            meta = vm["metadata"]
            try:
                kube.json_patch(VMS.item(meta["name"], meta["namespace"]), ops)
                log.info("VM restored", extra={"vm": f"{meta['namespace']}/{meta['name']}"})
            except (ApiError, OSError) as exc:
                if outcome(exc) != GONE:
                    failed += 1
                    log.error("cannot restore VM", extra={"vm": f"{meta['namespace']}/{meta['name']}", "error": str(exc)})
    failed += _remove_hook_configmaps(kube)
    for items in _pages(kube, NODES.collection()):
        for name, patch in plan(items).items():
            try:
                kube.merge_patch(NODES.item(name), {"metadata": {"labels": patch}})
                log.info("labels removed", extra={"node": name, "labels": sorted(patch)})
            except (ApiError, OSError) as exc:
                if outcome(exc) != GONE:
                    failed += 1
                    log.error("cannot remove labels", extra={"node": name, "error": str(exc)})
    return 1 if failed else 0
