"""The one step that writes: a :class:`~armcpu_operator.planning.world.ModelPlan` sent to the API server.

Order: node labels, VM patches (``WRITE_CONCURRENCY`` at a time), the domain hook ConfigMaps, the
CpuModel's status, its Events. What the status says after a partial failure comes from
:meth:`ModelPlan.settle` over the VM writes that did not land, never from a second plan.

One error policy, :func:`armcpu_k8s.kube.outcome`: a 404 means the object is gone (done); a 409 or
a refused JSON-patch ``test`` means it changed since it was read (the next reconcile plans from the
newer state); no answer, a 5xx or a 429 (after the client's own ``Retry-After`` waits) is retried
with the model's back-off; anything else is logged as an error and retried the same way.

Labels and VM patches are remembered before they are sent: the watch's echo may arrive before the
response, and must be recognised as ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import kopf

from armcpu_k8s.kube import CONFLICT, GONE, ApiError, Kube, outcome
from armcpu_k8s.resources import CPUMODELS, NODES, VMS
from armcpu_operator import hookmaps, metrics
from armcpu_operator.caches import Caches
from armcpu_operator.planning.world import ModelPlan, VmKey, dump

log = logging.getLogger("armcpu.operator")
WRITE_CONCURRENCY = 8  # parallel write requests: each waits on a round trip, not on CPU
# The threads that send writes: long-lived, so each keeps its kept-alive connection (armcpu_k8s.kube) between reconciles.
WRITERS = ThreadPoolExecutor(WRITE_CONCURRENCY, thread_name_prefix="armcpu-write")


@dataclass(frozen=True)
class Result:
    """What a reconcile's writes came to."""

    failed_labels: tuple[str, ...] = ()
    failed_vms: frozenset[VmKey] = frozenset()
    hooks_ok: bool = True
    more: bool = False  # the plan deferred VM writes: reconcile again at once

    @property
    def ok(self) -> bool:
        return not self.failed_labels and not self.failed_vms and self.hooks_ok


def label_node(kube: Kube, node: str, patch: Mapping[str, str | None]) -> bool:
    """One node's label patch; a node deleted meanwhile counts as done. A request that got no answer
    (the API server unreachable or restarting) counts as failed: it may not have landed."""
    try:
        kube.merge_patch(NODES.item(node), {"metadata": {"labels": dict(patch)}})
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
    results = list(WRITERS.map(lambda item: label_node(kube, item[0], item[1]), items))
    return [node for (node, _), ok in zip(items, results, strict=True) if not ok]


async def send_labels(kube: Kube, caches: Caches, changes: Mapping[str, Mapping[str, str | None]]) -> tuple[str, ...]:
    caches.remember_labels(changes)  # before sending: the echo may arrive before the response
    try:
        failed = await asyncio.to_thread(apply_labels, kube, changes)
    except BaseException:  # a remembered write that was never made would hide the label from every later plan
        caches.forget_labels(changes)
        raise
    caches.forget_labels(failed)
    return tuple(failed)


async def send_vm_patches(kube: Kube, caches: Caches, model: str, planned: ModelPlan) -> frozenset[VmKey]:
    """Send the plan's VM patches, WRITE_CONCURRENCY at a time; returns the VMs whose patch did not land.
    A fixed set of senders takes the writes in turn (no task per VM: 20,000 of them cost ~60 MiB)."""
    loop = asyncio.get_running_loop()
    queue = iter(sorted(planned.vm_writes))
    failed: set[VmKey] = set()

    async def send_one(key: VmKey) -> bool:
        write = planned.vm_writes[key]
        caches.written_vms[key] = write.stored  # remembered before sending, so the watch's echo is recognised
        try:
            await loop.run_in_executor(WRITERS, kube.json_patch, VMS.item(key[1], key[0]), write.patch)
        except (ApiError, OSError) as exc:
            caches.written_vms.pop(key, None)  # not landed, or not known to have landed: the view falls back to the watch
            verdict = outcome(exc)
            if verdict == GONE:
                return True
            if verdict != CONFLICT:  # a conflict: changed since we read it; the next reconcile starts from the new state
                log.error("patching a VM failed", extra={"cpumodel": model, "vm": "/".join(key), "error": str(exc), "outcome": verdict})
            return False
        return True

    async def sender() -> None:
        for key in queue:  # shared: each key is taken by exactly one sender
            if not await send_one(key):
                failed.add(key)

    await asyncio.gather(*(sender() for _ in range(min(WRITE_CONCURRENCY, len(planned.vm_writes)))))
    return frozenset(failed)


async def refresh_hook_configmaps(kube: Kube, caches: Caches, max_age: float) -> bool:
    """List armcpu's domain hook ConfigMaps when the cached list is missing or older than ``max_age``
    seconds (before the World is built, so the plan knows what exists). False: the list failed."""
    loop = asyncio.get_running_loop()
    if caches.hook_configmaps is not None and loop.time() - caches.hook_configmaps_listed <= max_age:
        return True
    try:
        caches.hook_configmaps = await asyncio.to_thread(hookmaps.held_namespaces, kube)
    except (ApiError, OSError) as exc:
        log.error("listing the domain hook ConfigMaps failed", extra={"error": str(exc), "outcome": outcome(exc)})
        caches.hook_configmaps = None  # unknown: this reconcile plans no ConfigMap change and is retried
        return False
    caches.hook_configmaps_listed = loop.time()
    return True


async def send_hook_changes(kube: Kube, caches: Caches, planned: ModelPlan) -> bool:
    changes = planned.hook_changes
    if changes is None:
        return False  # the ConfigMaps could not be listed: retried with the model's back-off
    if not (changes.create or changes.update or changes.delete):
        return True
    held = caches.hook_configmaps if caches.hook_configmaps is not None else {}
    try:
        ok = await asyncio.to_thread(hookmaps.apply, kube, changes, held)
    except OSError as exc:  # no answer: what exists is unknown until listed again
        log.error("the domain hook ConfigMaps could not be brought in line", extra={"error": str(exc)})
        ok = False
    if not ok:
        caches.hook_configmaps = None  # list again on the retry
    log.info("domain hook ConfigMaps", extra={"namespaces_created": changes.create, "namespaces_updated": changes.update,
                                              "namespaces_deleted": changes.delete})
    return ok


async def send_status(kube: Kube, caches: Caches, name: str, observed: Mapping[str, Any] | None, planned: ModelPlan) -> None:
    """Replace the status if it differs (a JSON patch ``add /status``: a merge patch would keep
    register keys the new model no longer has)."""
    desired = dump(planned.status)
    if dict(observed or {}) == desired:
        return
    await asyncio.to_thread(kube.json_patch, CPUMODELS.status(name), [{"op": "add", "path": "/status", "value": desired}])
    caches.written_status[name] = desired


def post_events(body: kopf.Body, planned: ModelPlan, caches: Caches) -> None:
    for event in planned.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    for vm_event in planned.vm_events:
        kopf.event(kopf.Body(cast(kopf.RawBody, dict(vm_event.vm))), type=vm_event.event.type, reason=vm_event.event.reason,
                   message=vm_event.event.message)
    caches.ambiguous_reported |= planned.report_ambiguous
    caches.ambiguous_reported -= planned.clear_ambiguous
    caches.unhooked_reported |= planned.report_unhooked
    caches.unhooked_reported -= planned.clear_unhooked
    caches.unstartable_reported |= planned.report_unstartable
    caches.unstartable_reported -= planned.clear_unstartable


def record_metrics(planned: ModelPlan) -> None:
    metrics.NODES.labels(planned.name, "selected").set(len(planned.selected))
    metrics.NODES.labels(planned.name, "compatible").set(len(planned.compatible))
    metrics.NODES.labels(planned.name, "incompatible").set(len(planned.incompatible))
    if planned.revision is not None:
        metrics.REVISION.labels(planned.name).set(planned.revision)


async def execute(kube: Kube, caches: Caches, body: kopf.Body, observed: Mapping[str, Any] | None, planned: ModelPlan) -> Result:
    """Send one reconcile's plan. The status written describes what landed."""
    failed_labels = await send_labels(kube, caches, planned.label_changes)
    failed_vms = await send_vm_patches(kube, caches, planned.name, planned)
    settled = planned.settle(failed_vms)
    hooks_ok = await send_hook_changes(kube, caches, settled)
    await send_status(kube, caches, planned.name, observed, settled)
    post_events(body, settled, caches)
    record_metrics(settled)
    if planned.vm_writes:
        log.info("patched VMs", extra={"cpumodel": planned.name, "vms": ["/".join(k) for k in sorted(planned.vm_writes) if k not in failed_vms]})
    if planned.label_changes or planned.events:
        log.info("reconciled", extra={"cpumodel": planned.name, "revision": planned.revision, "labels": sorted(planned.label_changes),
                                      "compatible": len(planned.compatible), "incompatible": len(planned.incompatible)})
    return Result(failed_labels=failed_labels, failed_vms=failed_vms, hooks_ok=hooks_ok, more=bool(planned.deferred))


async def execute_removal(kube: Kube, caches: Caches, planned: ModelPlan) -> str | None:
    """A deleted CpuModel's labels, VM restores and ConfigMaps; what failed (for kopf to retry), or None."""
    failed_labels = await send_labels(kube, caches, planned.label_changes)
    if failed_labels:
        return f"could not remove the labels of CpuModel {planned.name} from {', '.join(failed_labels)}"
    if await send_vm_patches(kube, caches, planned.name, planned):
        return f"could not restore every VM {planned.name} had patched"
    if not await send_hook_changes(kube, caches, planned.settle(frozenset())):
        return "could not remove the domain hook ConfigMaps no VM needs any more"
    return None
