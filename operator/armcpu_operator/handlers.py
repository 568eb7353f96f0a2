"""kopf registration: indexes and event handlers on Nodes and NodeCpuProfiles (never stateful
handlers there, so kopf writes no annotations or finalizers on Nodes), and on armcpu's own
CpuModels a reconcile loop (daemon), a deletion handler and the validating webhook.

Handlers translate; :mod:`armcpu_operator.plan` decides and :mod:`armcpu_operator.act` writes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import time
from typing import Any

import kopf

from armcpu_operator import act, metrics, plan
from armcpu_operator import spec as specs
from armcpu_operator.runtime import RUNTIME
from armcpu_operator.state import State

log = logging.getLogger("armcpu.operator")
GROUP, VERSION = "armcpu.io", "v1alpha1"
STATE = State()


def _kube() -> Any:
    assert RUNTIME.kube is not None, "main() sets RUNTIME.kube before kopf starts"
    return RUNTIME.kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "armcpu.io/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.armcpu.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.armcpu.io", key="last-handled-configuration")
    settings.posting.level = logging.CRITICAL  # Events come only from kopf.event() calls, for changes that matter
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    hook = RUNTIME.webhook
    if hook is not None:
        settings.admission.server = kopf.WebhookServer(
            addr=hook.addr, port=hook.port, host=hook.host, certfile=str(hook.certfile), pkeyfile=str(hook.keyfile),
            cafile=str(hook.cafile) if hook.cafile else None,
        )
        if hook.config_name:
            settings.admission.managed = hook.config_name


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs) or kopf.login_with_service_account(**kwargs)


# ------------------------------------------------------------------ indexes (memory, no LIST per event)

@kopf.index("nodes")
def node_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.index(GROUP, VERSION, "nodecpuprofiles")
def node_profiles(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: copy.deepcopy(dict(spec))}


@kopf.index(GROUP, VERSION, "cpumodels")
def model_selectors(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: copy.deepcopy(dict(spec.get("nodeSelector") or {}))}


def _single(index: kopf.Index[str, Any]) -> dict[str, Any]:
    return {key: next(iter(store)) for key, store in index.items() if len(store)}


# ------------------------------------------------------------------ who needs a reconcile

@kopf.on.event("nodes")
def node_event(type: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    for model in STATE.node_event(name, None if type == "DELETED" else labels, _single(kwargs["model_selectors"])):
        STATE.trigger(model)


@kopf.on.event(GROUP, VERSION, "nodecpuprofiles")
def profile_event(name: str, **kwargs: Any) -> None:
    for model in STATE.profile_event(name, _single(kwargs["model_selectors"])):
        STATE.trigger(model)


@kopf.on.event(GROUP, VERSION, "cpumodels")
def model_event(type: str, name: str, meta: kopf.Meta, **_: Any) -> None:
    if STATE.model_event(name, meta.get("generation"), type == "DELETED"):
        STATE.trigger(name)


# ------------------------------------------------------------------ reconcile

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def reconcile_once(name: str, body: kopf.Body, node_labels: kopf.Index[str, Any], node_profiles: kopf.Index[str, Any]) -> bool:
    start = time.monotonic()
    observed_status = copy.deepcopy(dict(body.get("status") or {})) or None
    status = STATE.status_view(name, observed_status)
    obj = {"metadata": {"name": name, "generation": body.meta.get("generation")}, "spec": copy.deepcopy(dict(body.spec)), "status": status}
    nodes = STATE.labels_view(_single(node_labels))
    result = plan.reconcile(obj, nodes, _single(node_profiles), _now())
    kube = _kube()
    failed = await asyncio.to_thread(act.apply_labels, kube, result.label_changes)
    STATE.remember_labels(result.label_changes, failed)
    if await asyncio.to_thread(act.apply_status, kube, name, status, result.status):
        STATE.written_status[name] = result.status
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - start)
    metrics.NODES.labels(name, "selected").set(len(result.selected))
    metrics.NODES.labels(name, "compatible").set(len(result.compatible))
    metrics.NODES.labels(name, "incompatible").set(len(result.incompatible))
    if result.status.get("revision") is not None:
        metrics.REVISION.labels(name).set(result.status["revision"])
    if result.label_changes or result.events:
        log.info("reconciled", extra={"cpumodel": name, "revision": result.status.get("revision"), "labels": sorted(result.label_changes),
                                      "compatible": len(result.compatible), "incompatible": len(result.incompatible)})
    return not failed


@kopf.daemon(GROUP, VERSION, "cpumodels", cancellation_timeout=5.0)
async def reconcile_loop(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    """Level-based: reconcile at start, whenever an event can affect this model, and every resync."""
    node_labels, node_profiles = kwargs["node_labels"], kwargs["node_profiles"]
    trigger = STATE.triggers.setdefault(name, asyncio.Event())
    trigger.set()
    metrics.MODELS.inc()
    try:
        while not stopped:
            waited = 0.0
            while not trigger.is_set() and not stopped and waited < RUNTIME.resync_seconds:
                try:  # wake at least once a second to notice `stopped` without kopf having to cancel us
                    await asyncio.wait_for(trigger.wait(), timeout=1.0)
                except TimeoutError:
                    waited += 1.0
            if stopped:
                break
            trigger.clear()
            await asyncio.sleep(RUNTIME.debounce_seconds)  # one reconcile for a burst of node events
            try:
                if not await reconcile_once(name, body, node_labels, node_profiles):
                    metrics.RECONCILE_ERRORS.labels(name).inc()
                    asyncio.get_running_loop().call_later(5.0, trigger.set)
            except Exception as exc:  # never let one bad reconcile kill the loop
                metrics.RECONCILE_ERRORS.labels(name).inc()
                log.exception("reconcile failed", extra={"cpumodel": name, "error": str(exc)})
                asyncio.get_running_loop().call_later(10.0, trigger.set)
    finally:
        metrics.MODELS.dec()


@kopf.on.delete(GROUP, VERSION, "cpumodels")
async def cleanup(name: str, **kwargs: Any) -> None:
    """The CpuModel is going away: its label leaves every node before the finalizer is removed."""
    changes = plan.removal(name, STATE.labels_view(_single(kwargs["node_labels"])))
    failed = await asyncio.to_thread(act.apply_labels, _kube(), changes)
    if failed:
        raise kopf.TemporaryError(f"could not remove {plan.label_key(name)} from {', '.join(failed)}", delay=10)
    STATE.remember_labels(changes, [])
    STATE.triggers.pop(name, None)
    metrics.forget(name)
    log.info("cpumodel deleted; labels removed", extra={"cpumodel": name, "nodes": sorted(changes)})


# ------------------------------------------------------------------ admission

def validate_cpumodel(spec: kopf.Spec, **_: Any) -> None:
    """The same checks the reconciler reports as Invalid; failurePolicy Ignore, so a down operator
    never blocks kubectl (the reconciler then reports the problem on the object)."""
    request = specs.parse(copy.deepcopy(dict(spec)))
    if request.errors:
        raise kopf.AdmissionError("; ".join(request.errors), code=422)


def register_webhook() -> None:
    """Registered only when main() configures a webhook server (kopf refuses handlers without one)."""
    kopf.on.validate(GROUP, VERSION, "cpumodels", id="validate-cpumodel", operations=["CREATE", "UPDATE"],
                     ignore_failures=True)(validate_cpumodel)
