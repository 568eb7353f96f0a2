"""Each CpuModel's reconcile loop, and its deletion: caches → World → plan → executor, in one direction.

Level-based: a model reconciles at start, whenever an event can affect it (its trigger, set by
:mod:`armcpu_operator.caches`), and every resync period. A failed reconcile is retried with the
model's own exponential back-off (2 s doubling to 5 min); any event still wakes it at once.

:func:`collect_garbage` removes what CpuModels that no longer exist left behind (a finalizer removed
by hand skips :func:`remove`): at start, after each CpuModel deletion, and every resync period.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from armcpu_k8s.kube import Kube
from armcpu_k8s.resources import CPUMODELS
from armcpu_operator import executor, hookmaps, metrics, periodic
from armcpu_operator.caches import Caches
from armcpu_operator.planning import world as worlds
from armcpu_operator.runtime import Runtime

log = logging.getLogger("armcpu.operator")
RETRY_FIRST, RETRY_MAX = 2.0, 300.0


def retry_delay(failures: int) -> float:
    """Seconds before the next try after ``failures`` failed reconciles in a row: 2, 4, 8, ... up to 5 min.
    Any event still wakes the model at once; this only spaces the retries nothing asked for."""
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1)))


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot(caches: Caches, runtime: Runtime) -> worlds.World:
    return caches.world(now(), hook_script=hookmaps.SCRIPT, kernel_verification=runtime.kernel_verification,
                        vmm=runtime.vmm)


async def reconcile_once(kube: Kube, caches: Caches, runtime: Runtime, name: str, body: kopf.Body) -> executor.Result:
    start = time.monotonic()
    await executor.refresh_hook_configmaps(kube, caches, runtime.resync_seconds)
    observed: Mapping[str, Any] | None = caches.status_view(name, copy.deepcopy(dict(body.get("status") or {})) or None)
    cpumodel = worlds.CpuModel(name=name, generation=body.meta.get("generation"), spec=dict(body.spec), status=observed)
    planned = worlds.plan_model(snapshot(caches, runtime), cpumodel)
    result = await executor.execute(kube, caches, body, observed, planned)
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - start)
    return result


async def run(kube: Kube, caches: Caches, runtime: Runtime, name: str, body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    trigger = caches.triggers.setdefault(name, asyncio.Event())
    trigger.set()
    failures = 0  # consecutive failed reconciles of this model: its retries back off, other models' do not
    more = False  # the last plan deferred VM writes
    metrics.MODELS.inc()
    try:
        while not caches.listed() and not stopped:  # as kopf does for its indexes: start from a full view
            await asyncio.sleep(0.2)
        while not stopped:
            waited = 0.0
            while not trigger.is_set() and not stopped and waited < runtime.resync_seconds:
                try:  # wake at least once a second to notice `stopped` without kopf having to cancel us
                    await asyncio.wait_for(trigger.wait(), timeout=1.0)
                except TimeoutError:
                    waited += 1.0
            if stopped:
                break
            trigger.clear()
            if not more:  # the next batch of a plan's deferred VM writes goes at once
                await asyncio.sleep(runtime.debounce_seconds)  # one reconcile for a burst of node events
            more = False
            try:
                result = await reconcile_once(kube, caches, runtime, name, body)
                ok, more = result.ok, result.more
            except Exception as exc:  # never let one bad reconcile kill the loop
                ok = False
                log.exception("reconcile failed", extra={"cpumodel": name, "error": str(exc)})
            if ok and more:
                trigger.set()  # the plan deferred VM writes (bounded per reconcile): the next batch at once
            failures = 0 if ok else failures + 1
            if failures:
                metrics.RECONCILE_ERRORS.labels(name).inc()
                asyncio.get_running_loop().call_later(retry_delay(failures), trigger.set)
    finally:
        metrics.MODELS.dec()


async def _take_off(kube: Kube, caches: Caches, runtime: Runtime, name: str) -> tuple[worlds.ModelPlan, str | None]:
    """Everything of CpuModel ``name`` off the cluster, on a fresh view of the hook ConfigMaps: the plan,
    and the problem that stopped its writes (None: all done). A deletion and the garbage collector
    take a model off the same way."""
    await executor.refresh_hook_configmaps(kube, caches, runtime.resync_seconds)
    planned = worlds.plan_removal(snapshot(caches, runtime), name)
    return planned, await executor.execute_removal(kube, caches, planned)


async def remove(kube: Kube, caches: Caches, runtime: Runtime, name: str) -> None:
    """The CpuModel is going away: its labels leave every node, every VM it patched is restored and the
    hook ConfigMaps no VM needs go, before kopf removes the finalizer."""
    while not caches.listed():
        await asyncio.sleep(0.2)
    planned, problem = await _take_off(kube, caches, runtime, name)
    if problem is not None:
        raise kopf.TemporaryError(f"{problem}; retrying", delay=5)
    caches.triggers.pop(name, None)
    metrics.forget(name)
    log.info("cpumodel deleted; labels removed", extra={"cpumodel": name, "nodes": sorted(planned.label_changes)})


async def collect_garbage(kube: Kube, caches: Caches, runtime: Runtime) -> list[str]:
    """Remove the labels and VM dressing of every CpuModel that no longer exists; the models cleaned.

    The CpuModels are listed from the API server at that moment (not taken from kopf's index, which
    may not have seen a creation yet): a model created meanwhile is listed, so nothing of a live
    model is ever taken for garbage."""
    while not caches.listed():
        await asyncio.sleep(0.2)
    listing = await asyncio.to_thread(kube.get, CPUMODELS.collection())
    existing = {item["metadata"]["name"] for item in listing.get("items") or []}
    cleaned = []
    for name in worlds.orphaned_models(snapshot(caches, runtime), existing):
        planned, problem = await _take_off(kube, caches, runtime, name)
        if problem is not None:
            log.warning("garbage of a deleted cpumodel not removed yet", extra={"cpumodel": name, "error": problem})
            continue
        log.info("removed what a deleted cpumodel left (its finalizer was removed without armcpu's cleanup)",
                 extra={"cpumodel": name, "nodes": sorted(planned.label_changes), "vms": len(planned.vm_writes)})
        cleaned.append(name)
    return cleaned


async def garbage_loop(kube: Kube, caches: Caches, runtime: Runtime) -> None:
    """:func:`collect_garbage` at start, whenever a CpuModel is deleted (``caches.garbage``), and every
    resync period; a failure is logged and tried again at the next occasion."""

    async def step() -> None:
        try:
            await collect_garbage(kube, caches, runtime)
        except Exception as exc:  # the next deletion or resync tries again
            log.exception("garbage collection failed", extra={"error": str(exc)})

    await periodic.whenever(caches.garbage, runtime, step)
