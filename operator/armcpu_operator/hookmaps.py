"""Listing and writing armcpu's domain hook ConfigMaps (what to write is decided by
:mod:`armcpu_operator.planning.hooks`).

Only ConfigMaps with armcpu's labels are ever listed, changed or deleted. The reconciler caches the
list and refreshes it once per resync period, so a reconcile that changes nothing neither lists nor
writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from armcpu_k8s import domain_hook
from armcpu_k8s.kube import CONFLICT, GONE, ApiError, Kube, outcome
from armcpu_k8s.resources import CONFIGMAPS
from armcpu_operator.planning import hooks, vms

log = logging.getLogger("armcpu.operator")
SCRIPT = Path(domain_hook.__file__).read_text()  # the onDefineDomain script every hook ConfigMap carries


def path(namespace: str) -> str:
    return CONFIGMAPS.item(vms.HOOK_CONFIGMAP, namespace)


def held_namespaces(kube: Kube) -> dict[str, str]:
    """Namespace -> script of every domain hook ConfigMap armcpu holds (by its labels)."""
    found = kube.request("GET", CONFIGMAPS.collection(), query={"labelSelector": hooks.SELECTOR})
    return {item["metadata"]["namespace"]: (item.get("data") or {}).get(vms.HOOK_KEY, "")
            for item in found.get("items") or [] if item["metadata"]["name"] == vms.HOOK_CONFIGMAP}


def _ours(kube: Kube, namespace: str) -> bool:
    """Whether the ConfigMap under the hook's name in ``namespace`` carries armcpu's labels."""
    try:  # a list, not a get: armcpu's RBAC lists ConfigMaps and never reads one by name
        found = kube.request("GET", CONFIGMAPS.collection(namespace), query={"fieldSelector": f"metadata.name={vms.HOOK_CONFIGMAP}"})
    except (ApiError, OSError):
        return True  # unknown: list again rather than call it someone else's
    items = found.get("items") or []
    found_labels = ((items[0].get("metadata") or {}).get("labels") or {}) if items else {}
    return not items or all(found_labels.get(k) == v for k, v in hooks.LABELS.items())


def apply(kube: Kube, changes: hooks.Changes, held: dict[str, str]) -> bool:
    """Send ``changes``; ``held`` follows what now exists. False when something must be retried.
    Each failure is judged by :func:`armcpu_k8s.kube.outcome`, the one error policy."""
    ok = True
    for ns in changes.create:
        try:
            kube.create(CONFIGMAPS.collection(ns), hooks.configmap(ns, SCRIPT))
        except (ApiError, OSError) as exc:
            if outcome(exc) == CONFLICT and _ours(kube, ns):
                # ours, made after our list (by another armcpu, or our list is old): list again and update it
                log.info("the domain hook ConfigMap exists already; listing again", extra={"namespace": ns})
                ok = False
            elif outcome(exc) == CONFLICT:  # not ours: never overwrite it
                log.error("a ConfigMap armcpu does not own holds the domain hook's name; VMs there cannot start with the hook",
                          extra={"namespace": ns, "configmap": vms.HOOK_CONFIGMAP})
            else:
                log.error("creating the domain hook ConfigMap failed", extra={"namespace": ns, "error": str(exc), "outcome": outcome(exc)})
                ok = False
            continue
        held[ns] = SCRIPT
    for ns in changes.update:
        try:
            kube.merge_patch(path(ns), {"data": {vms.HOOK_KEY: SCRIPT}})
            held[ns] = SCRIPT
        except (ApiError, OSError) as exc:
            log.error("updating the domain hook ConfigMap failed", extra={"namespace": ns, "error": str(exc), "outcome": outcome(exc)})
            ok = False
    for ns in changes.delete:
        try:
            kube.delete(path(ns))
        except (ApiError, OSError) as exc:
            if outcome(exc) != GONE:
                log.error("deleting the domain hook ConfigMap failed", extra={"namespace": ns, "error": str(exc), "outcome": outcome(exc)})
                ok = False
                continue
        held.pop(ns, None)
    return ok
