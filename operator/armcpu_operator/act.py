"""Apply a plan: node labels, then the CpuModel status, each written only where it differs.

Labels are merge patches naming only the model's own key; the status is replaced as a whole on
the status subresource (a JSON patch ``add /status``), because a merge patch would keep register
keys that the new model no longer has.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from armcpu_k8s.kube import GONE, ApiError, Kube, outcome

log = logging.getLogger("armcpu.operator")
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"


WRITE_CONCURRENCY = 8  # parallel write requests per reconcile: each waits on a round trip, not on CPU


def label_node(kube: Kube, node: str, patch: Mapping[str, str | None]) -> bool:
    """One node's label patch; a node deleted meanwhile counts as done. A request that got no answer
    (the API server unreachable or restarting) counts as failed: it may not have landed."""
    try:
        kube.merge_patch(f"/api/v1/nodes/{node}", {"metadata": {"labels": dict(patch)}})
    except (ApiError, OSError) as exc:
        if outcome(exc) == GONE:
            return True
        log.error("labelling a node failed", extra={"node": node, "error": str(exc), "outcome": outcome(exc)})
        return False
    return True


def apply_labels(kube: Kube, changes: Mapping[str, Mapping[str, str | None]]) -> list[str]:
    """Patch every node (WRITE_CONCURRENCY at a time). Returns the nodes that failed."""
    items = sorted(changes.items())
    if not items:
        return []
    with ThreadPoolExecutor(min(WRITE_CONCURRENCY, len(items))) as pool:
        results = list(pool.map(lambda item: label_node(kube, item[0], item[1]), items))
    return [node for (node, _), ok in zip(items, results, strict=True) if not ok]


def apply_status(kube: Kube, name: str, current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Replace the status if it differs; True when a write was made."""
    if dict(current or {}) == dict(desired):
        return False
    kube.json_patch(f"{CPUMODELS}/{name}/status", [{"op": "add", "path": "/status", "value": dict(desired)}])
    return True

