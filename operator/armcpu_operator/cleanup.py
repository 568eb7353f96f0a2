"""``armcpu-operator cleanup``: take every armcpu label off every Node and restore every VM armcpu
patched (the chart's pre-delete hook).

Uninstalling armcpu must leave Nodes and VirtualMachines as they were: the agent's ``armcpu.io/``
and ``feature.armcpu.io/`` keys and the operator's ``cpumodel.armcpu.io/`` keys go, and each VM
loses exactly what its ``armcpu.io/applied`` record says armcpu added (otherwise its nodeSelector
would name labels no node carries any more). The domain hook ConfigMaps go too, except in namespaces
where a running VM was started with the hook (its next migration target mounts the ConfigMap again; it
is left for its owner, and named in the log). Nothing else is touched. Idempotent: a second run
changes nothing (its labels and VMs are clean; its stop requests find the objects stopped or gone).

First, what ``--stop`` names stops acting (the chart names its own release's objects): its webhook
configurations are deleted, the operator's Deployment is scaled to zero and the agents' DaemonSet is
kept off every node, and the cleanup waits until their pods are gone. A pre-delete hook runs while
the release is still up, and a running operator puts back, within a second, the labels and VM
patches the cleanup takes off (seen on a real kubelet); a webhook with failurePolicy Fail and no
operator behind it would refuse the VM restores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from armcpu_k8s import labels
from armcpu_k8s.kube import GONE, ApiError, Kube, outcome
from armcpu_k8s.resources import (
    DAEMONSETS,
    DEPLOYMENTS,
    MUTATING_WEBHOOKS,
    NODES,
    PODS,
    VALIDATING_WEBHOOKS,
    VMIS,
    VMS,
    Resource,
)
from armcpu_operator import hookmaps
from armcpu_operator.planning import hooks, vms

log = logging.getLogger("armcpu.cleanup")


STOPPABLE: dict[str, Resource] = {
    "validatingwebhookconfiguration": VALIDATING_WEBHOOKS,
    "mutatingwebhookconfiguration": MUTATING_WEBHOOKS,
    "deployment": DEPLOYMENTS,
    "daemonset": DAEMONSETS,
}
# A nodeSelector key no node carries: the agents' DaemonSet then runs nowhere, and helm deletes it next.
NOWHERE = {labels.AGENT_PREFIXES[0] + "uninstalling": "true"}


@dataclass(frozen=True)
class Stop:
    """One of the release's objects that must stop acting before the cleanup: ``kind/name``."""

    kind: str
    name: str

    @classmethod
    def parse(cls, ref: str) -> Stop:
        kind, _, name = ref.partition("/")
        if kind.lower() not in STOPPABLE or not name:
            raise ValueError(f"--stop {ref!r}: want KIND/NAME with KIND one of {', '.join(STOPPABLE)}")
        return cls(kind.lower(), name)

    def request(self, namespace: str) -> tuple[str, str, dict[str, Any] | None]:
        """(method, path, merge patch): delete a webhook configuration, scale a Deployment to zero,
        keep a DaemonSet off every node."""
        resource = STOPPABLE[self.kind]
        path = resource.item(self.name, namespace if resource.namespaced else None)
        if self.kind == "deployment":
            return "PATCH", path, {"spec": {"replicas": 0}}
        if self.kind == "daemonset":
            return "PATCH", path, {"spec": {"template": {"spec": {"nodeSelector": NOWHERE}}}}
        return "DELETE", path, None


def _pod_selector(workload: dict[str, Any]) -> str:
    match = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(match.items()))


def stop(kube: Kube, namespace: str, stops: Sequence[Stop], timeout: float = 180.0, poll: float = 1.0) -> bool:
    """Make ``stops`` stop acting, then wait until the workloads' pods are gone; False if one
    cannot be stopped or its pods outlive ``timeout`` (the hook Job then fails, and helm keeps the
    release: uninstall again)."""
    selectors = []
    for item in stops:
        method, path, body = item.request(namespace)
        try:
            if method == "DELETE":
                kube.delete(path)
            else:
                selectors.append(_pod_selector(kube.merge_patch(path, body)))
            log.info("stopped", extra={"object": f"{item.kind}/{item.name}"})
        except (ApiError, OSError) as exc:
            if outcome(exc) != GONE:
                log.error("cannot stop", extra={"object": f"{item.kind}/{item.name}", "error": str(exc)})
                return False
    deadline = time.monotonic() + timeout
    while True:
        try:
            remaining = sorted(pod["metadata"]["name"] for selector in selectors if selector
                               for pod in kube.request("GET", PODS.collection(namespace), query={"labelSelector": selector}).get("items", []))
        except (ApiError, OSError) as exc:
            log.error("cannot list the stopped workloads' pods", extra={"error": str(exc)})
            return False
        if not remaining:
            return True
        if time.monotonic() > deadline:
            log.error("pods still running after stopping their workloads", extra={"pods": remaining, "seconds": timeout})
            return False
        time.sleep(poll)


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


def run(kube: Kube, namespace: str = "", stops: Sequence[Stop] = ()) -> int:
    if stops and not stop(kube, namespace, stops):
        return 1
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
