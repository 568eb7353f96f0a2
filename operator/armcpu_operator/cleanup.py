"""``armcpu-operator cleanup``: take every armcpu label off every Node (the chart's pre-delete hook).

Uninstalling armcpu must leave Nodes as they were: the agent's ``armcpu.io/`` and
``feature.armcpu.io/`` keys and the operator's ``cpumodel.armcpu.io/`` keys go; nothing else is
touched. Idempotent: a second run finds nothing and writes nothing.
"""

from __future__ import annotations

import logging

from armcpu_k8s import labels
from armcpu_k8s.kube import ApiError, Kube

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


def run(kube: Kube) -> int:
    failed = 0
    continue_token = ""
    while True:
        query = {"limit": "500", **({"continue": continue_token} if continue_token else {})}
        page = kube.request("GET", "/api/v1/nodes", query=query)
        for name, patch in plan(page.get("items", [])).items():
            try:
                kube.merge_patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": patch}})
                log.info("labels removed", extra={"node": name, "labels": sorted(patch)})
            except ApiError as exc:
                if exc.status != 404:
                    failed += 1
                    log.error("cannot remove labels", extra={"node": name, "error": str(exc)})
        continue_token = (page.get("metadata") or {}).get("continue") or ""
        if not continue_token:
            break
    return 1 if failed else 0
