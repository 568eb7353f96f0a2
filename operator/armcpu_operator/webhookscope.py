"""Keep the VM webhook's ``matchConditions`` to the VMs some CpuModel selects (the one write step of
:func:`armcpu_operator.planning.admission.vm_webhook_condition`).

The MutatingWebhookConfiguration is armcpu's own (the chart's, or kopf's with ``--webhook-config``);
only the ``matchConditions`` of its ``mutate-vm.armcpu.io`` webhook are written, with a JSON patch
that first tests the webhook's name at that index. Written when a vmSelector changes, at start and
every resync period (kopf rewrites the webhooks of a configuration it manages when its server
restarts; until the next write the API server calls the webhook for every VM, as it did before).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from armcpu_k8s.kube import ApiError, Kube
from armcpu_k8s.resources import CPUMODELS, MUTATING_WEBHOOKS
from armcpu_operator import periodic
from armcpu_operator.caches import Caches
from armcpu_operator.planning import admission
from armcpu_operator.runtime import Runtime

log = logging.getLogger("armcpu.operator")


def patch_for(config: dict[str, Any], expression: str) -> list[dict[str, Any]] | None:
    """The JSON patch that gives the VM webhook this condition; None when it has it (or is not there)."""
    want = [{"name": admission.VM_CONDITION, "expression": expression}]
    for index, hook in enumerate(config.get("webhooks") or []):
        if hook.get("name") == admission.VM_WEBHOOK:
            if hook.get("matchConditions") == want:
                return None
            return [{"op": "test", "path": f"/webhooks/{index}/name", "value": admission.VM_WEBHOOK},
                    {"op": "add", "path": f"/webhooks/{index}/matchConditions", "value": want}]
    return None


async def sync(kube: Kube, name: str, expression: str) -> bool:
    """Write the condition if it differs; whether a write was made."""
    config = await asyncio.to_thread(kube.get, MUTATING_WEBHOOKS.item(name))
    ops = patch_for(config, expression)
    if ops is None:
        return False
    await asyncio.to_thread(kube.json_patch, MUTATING_WEBHOOKS.item(name), ops)
    log.info("VM webhook narrowed to the VMs CpuModels select", extra={"configuration": name, "chars": len(expression)})
    return True


async def claims_now(kube: Kube) -> dict[str, Any]:
    """Every CpuModel's claims, from a list made now: kopf's index may not hold them all yet at start,
    and a condition written from a partial view would keep selected VMs from the webhook."""
    listing = await asyncio.to_thread(kube.get, CPUMODELS.collection())
    return {item["metadata"]["name"]: admission.vm_claims(item.get("spec") or {}, item.get("status") or {},
                                                          bool(item["metadata"].get("deletionTimestamp")))
            for item in listing.get("items") or []}


async def loop(kube: Kube, caches: Caches, runtime: Runtime, name: str) -> None:
    """:func:`sync` at start, whenever a vmSelector changes (``caches.scope``) and every resync period."""

    async def step() -> None:
        try:
            await sync(kube, name, admission.vm_webhook_condition(await claims_now(kube)))
        except (ApiError, OSError) as exc:
            log.warning("cannot write the VM webhook's matchConditions; trying again", extra={"configuration": name, "error": str(exc)})
            asyncio.get_running_loop().call_later(5.0, caches.scope.set)

    await periodic.whenever(caches.scope, runtime, step)
