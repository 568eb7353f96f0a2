"""kopf registration, and the direct watches kopf does not do.

Nodes, NodeCpuProfiles, VirtualMachines and VirtualMachineInstances are listed and watched by
:mod:`armcpu_operator.listwatch` (kopf's per-event cost is too high for collections that size, and
kopf then writes nothing on them); kopf handles armcpu's own CpuModels (indexes, a reconcile loop
as a daemon, a deletion handler) and the webhooks.

Handlers translate; :mod:`armcpu_operator.plan` decides and :mod:`armcpu_operator.act` writes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import time
from typing import Any, cast

import kopf

from armcpu_k8s import labels as keys
from armcpu_k8s import selectors
from armcpu_k8s.kube import CONFLICT, GONE, ApiError, outcome
from armcpu_operator import act, hookmaps, listwatch, metrics, plan, vms
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
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's connection, from the operator's one credential path (kubeconfig, exec plugin or
    in-cluster, as :func:`armcpu_k8s.kube.load_credentials` read them): kopf and armcpu's client
    always talk to the same server as the same user. kopf logs in again on a 401, and before an
    exec plugin's token expires."""
    creds = _kube().credentials
    token = creds.bearer()
    return kopf.ConnectionInfo(server=creds.server, ca_path=str(creds.ca_file) if creds.ca_file else None, ca_data=creds.ca_pem,
                               certificate_data=creds.cert_pem, private_key_data=creds.key_pem, token=token,
                               scheme="Bearer" if token else None,
                               expiration=creds.exec_plugin.expires if creds.exec_plugin is not None else None)


# ------------------------------------------------------------------ indexes (memory, no LIST per event)

@kopf.index(GROUP, VERSION, "cpumodels")
def model_selectors(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: copy.deepcopy(dict(spec.get("nodeSelector") or {}))}


def _in_effect(spec: kopf.Spec, status: kopf.Status) -> dict[str, Any]:
    """The spec the current revision was computed from (empty when none is): a spec change that is
    invalid or not computed yet does not move VMs, at admission or in the reconciler."""
    return copy.deepcopy(dict(specs.applied_spec(dict(spec), dict(status)) or {}))


@kopf.index(GROUP, VERSION, "cpumodels")
def model_vm_selectors(name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any) -> dict[str, list[dict[str, Any]] | None]:
    """The VMs each model claims: by the vmSelector in effect, and by the one its spec asks for when
    that spec is valid (so a VM two models want is ambiguous even before one's change is computed)."""
    if meta.get("deletionTimestamp"):
        return {name: None}  # being deleted: it releases its VMs, the webhook must not dress them again
    wanted = [_in_effect(spec, status).get("vmSelector")]
    if specs.parse(dict(spec)).valid:
        wanted.append(copy.deepcopy(spec.get("vmSelector")))
    found = [dict(sel) for sel in wanted if sel]
    return {name: found or None}


@kopf.index(GROUP, VERSION, "cpumodels")
def model_definitions(name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any) -> dict[str, dict[str, Any] | None]:
    """What a selected VM is dressed with at admission: the current revision's definition."""
    model = status.get("model")
    if not model or status.get("revision") is None or meta.get("deletionTimestamp"):
        return {name: None}
    in_effect = _in_effect(spec, status)
    keep = ("qemu", "qemuMachine", "libvirtDisabled", "domainRewrite")
    return {name: {"revision": status["revision"], "fingerprint": status.get("fingerprint"),
                   "model": {k: copy.deepcopy(model.get(k)) for k in keep}, "enforcement": in_effect.get("enforcement"),
                   "vmSelector": in_effect.get("vmSelector"),
                   "live": [int(e["revision"]) for e in status.get("liveRevisions") or []]}}


def _vmi_definition(vmi: dict[str, Any]) -> tuple[str, str, bool] | None:
    """(model, revision, started with armcpu's domain hook) as the VM's template said at its start;
    None for a VMI armcpu did not dress (it is not kept)."""
    annotations = (vmi.get("metadata") or {}).get("annotations") or {}
    if vms.T_MODEL not in annotations:
        return None
    return annotations[vms.T_MODEL], annotations.get(vms.T_REVISION, ""), vms.HOOK_ANNOTATION in annotations


def _single(index: Any) -> dict[Any, Any]:
    return {key: next(iter(store)) for key, store in index.items() if len(store)}


def _running_of(model: str, vmis: dict[tuple[str, str], tuple[str, str, bool]]) -> dict[tuple[str, str], str]:
    """The revision each running VM of ``model`` was started with."""
    return {key: revision for key, (vmi_model, revision, _) in vmis.items() if vmi_model == model}


def _hooked_vmis(vmis: dict[tuple[str, str], tuple[str, str, bool]]) -> list[tuple[str, str]]:
    """Running VMs started with armcpu's domain hook: their namespaces keep the hook ConfigMap."""
    return [key for key, (_, _, with_hook) in vmis.items() if with_hook]


# ------------------------------------------------------------------ who needs a reconcile

def _replacing(store: dict[Any, Any], changes: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """A full list replaces the store: what it no longer has was deleted while we were not watching."""
    listed = dict(changes)
    return [*changes, *((key, None) for key in store if key not in listed)]


def node_changes(changes: list[tuple[listwatch.Key, dict[str, str] | None]], replace: bool) -> None:
    """Nodes' labels (on the loop): keep them, and wake the models a change can affect, except for
    the exact echo of our own label patch."""
    if replace:
        changes = _replacing({("", n): None for n in STATE.node_labels}, changes)
    for (_, name), labels in changes:
        before = STATE.node_labels.get(name)
        if labels is not None and before == labels:
            continue  # relisted unchanged, or only fields armcpu does not read changed
        woken = STATE.node_event(name, labels, STATE.model_selectors)
        written = STATE.written_labels.get(name)
        if labels is not None and written is not None and labels == keys.patched(before or {}, written):
            continue  # exactly the echo of our own label patch (nobody else changed anything): nothing to reconcile
        for model in woken:
            STATE.trigger(model)
    if replace:
        STATE.nodes_listed.set()


def profile_changes(changes: list[tuple[listwatch.Key, plan.ParsedProfile | None]], replace: bool) -> None:
    """NodeCpuProfiles, parsed once per change (in the watch thread): keep them, wake the models of their node."""
    if replace:
        changes = _replacing({("", n): None for n in STATE.node_profiles}, changes)
    for (_, name), parsed in changes:
        if parsed == STATE.node_profiles.get(name):
            continue
        if parsed is None:
            STATE.node_profiles.pop(name, None)
        else:
            STATE.node_profiles[name] = parsed
        for model in STATE.profile_event(name, STATE.model_selectors):
            STATE.trigger(model)
    if replace:
        STATE.profiles_listed.set()


def vm_changes(changes: list[tuple[listwatch.Key, dict[str, Any] | None]], replace: bool) -> None:
    """VMs (on the loop): keep the store, wake the models a change can affect, and recognise the echo
    of our own patches."""
    if replace:
        changes = _replacing(STATE.vm_store, changes)
    for key, vm in changes:
        if vm is None:
            STATE.vm_store.pop(key, None)
        else:
            STATE.vm_store[key] = vm
        labels_before = STATE.vm_labels.get(key, ({}, None))[0]
        woken = STATE.vm_event(key, vm, STATE.vm_selectors)
        written = STATE.written_vms.get(key)
        if vm is not None and written is not None and vms.roots_equal(vm, written) and (vm["metadata"].get("labels") or {}) == labels_before:
            continue  # exactly the echo of our own patch: nothing new to reconcile
        STATE.written_vms.pop(key, None)  # the watch shows a newer state than our write (someone, or a webhook, changed it)
        for model in woken:
            STATE.trigger(model)
    if replace:
        STATE.vms_listed.set()


def vmi_changes(changes: list[tuple[listwatch.Key, tuple[str, str, bool] | None]], replace: bool) -> None:
    """Running VMs of armcpu's models: one started or stopped, so its model's running counts change
    (a VMI's status updates change nothing here and wake nobody)."""
    if replace:
        changes = _replacing(STATE.vmi_definitions, changes)
    for key, definition in changes:
        for model in STATE.vmi_event(key, definition):
            STATE.trigger(model)
    if replace:
        STATE.vmis_listed.set()


def _labels_of(node: dict[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def _profile_of(item: dict[str, Any]) -> plan.ParsedProfile:
    return plan.parse_profile((item.get("metadata") or {}).get("name") or "", item.get("spec") or {})


@kopf.on.startup()
async def start_watches(**_: Any) -> None:
    loop = asyncio.get_running_loop()
    STATE.watches = [
        listwatch.ListWatch(_kube(), loop, "/api/v1/nodes", _labels_of, node_changes, what="nodes", metadata_only=True),
        listwatch.ListWatch(_kube(), loop, f"/apis/{GROUP}/{VERSION}/nodecpuprofiles", _profile_of, profile_changes, what="nodecpuprofiles"),
        listwatch.ListWatch(_kube(), loop, "/apis/kubevirt.io/v1/virtualmachines", vms.subset, vm_changes, what="virtualmachines"),
        listwatch.ListWatch(_kube(), loop, "/apis/kubevirt.io/v1/virtualmachineinstances", _vmi_definition, vmi_changes,
                            what="virtualmachineinstances", metadata_only=True),
    ]
    for watch in STATE.watches:
        watch.start()


@kopf.on.cleanup()
async def stop_watches(**_: Any) -> None:
    for watch in STATE.watches:
        watch.stop.set()


@kopf.on.event(GROUP, VERSION, "cpumodels")
async def model_event(type: str, name: str, meta: kopf.Meta, **kwargs: Any) -> None:
    STATE.vm_selectors = _single(kwargs["model_vm_selectors"])
    STATE.model_selectors = _single(kwargs["model_selectors"])
    if STATE.model_event(name, meta.get("generation"), type == "DELETED"):
        STATE.trigger(name)


# ------------------------------------------------------------------ reconcile

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def send_vm_patches(name: str, result: vms.VmPlan) -> set[tuple[str, str]]:
    """Send a plan's VM patches, WRITE_CONCURRENCY at a time; returns the VMs whose patch must be retried."""
    limit = asyncio.Semaphore(act.WRITE_CONCURRENCY)

    async def patch_one(key: tuple[str, str], ops: list[dict[str, Any]]) -> bool:
        async with limit:
            # remembered before sending, so the watch's echo (which may arrive before the response) is recognised
            STATE.written_vms[key] = result.targets[key]
            try:
                await asyncio.to_thread(_kube().json_patch, f"/apis/kubevirt.io/v1/namespaces/{key[0]}/virtualmachines/{key[1]}", ops)
            except (ApiError, OSError) as exc:
                # not landed, or (no answer) not known to have landed: the view falls back to the watch
                STATE.written_vms.pop(key, None)
                verdict = outcome(exc)
                if verdict == GONE:
                    return True
                if verdict != CONFLICT:  # a conflict: changed since we read it; the next attempt starts from the new state
                    log.error("patching a VM failed", extra={"cpumodel": name, "vm": "/".join(key), "error": str(exc), "outcome": verdict})
                return False
            return True

    keys = list(result.patches)
    landed = await asyncio.gather(*(patch_one(key, result.patches[key]) for key in keys))
    return {key for key, ok in zip(keys, landed, strict=True) if not ok}


async def reconcile_vms(name: str, applied: specs.Request, status: dict[str, Any], indexes: dict[str, Any],
                        vmis: dict[tuple[str, str], tuple[str, str, bool]]) -> tuple[dict[str, Any], list[tuple[str, str]], bool]:
    """Patch the VMs the spec in effect selects (or once patched); returns the VM counts, the running
    VMs waiting for a restart, and success. The counts describe what landed: a VM whose patch failed
    is counted as it still is."""
    desired = vms.desired_from(name, status, applied.enforcement) if status.get("model") else None
    view = STATE.vms_view(STATE.vm_store)
    live = [int(e["revision"]) for e in status.get("liveRevisions") or []]
    other_selectors = _single(indexes["model_vm_selectors"])
    running_of = _running_of(name, vmis)
    vm_selector = dict(applied.vm_selector) if applied.vm_selector is not None else None
    result = vms.plan_for_model(name, desired, vm_selector, view, other_selectors, running=running_of, live=live)
    failed = await send_vm_patches(name, result)
    after = {**view, **{key: vm for key, vm in result.targets.items() if key not in failed}}
    vm_counts = result.counts
    if failed:  # rare (faults only): count again over what is really there
        vm_counts = vms.plan_for_model(name, desired, vm_selector, after, other_selectors, running=running_of, live=live).counts
    ok = await hookmaps.sync(_kube(), STATE, after, _hooked_vmis(vmis)) and not failed
    running, pending = vms.running_revisions(name, vmis, after, desired)
    counts: dict[str, Any] = {**vm_counts, "running": running, "restartPending": len(pending)}
    for key, models in result.ambiguous.items():
        if key not in STATE.ambiguous_reported:
            STATE.ambiguous_reported.add(key)
            kopf.event(kopf.Body(cast(kopf.RawBody, view[key])), type="Warning", reason="AmbiguousCpuModel",
                       message=f"selected by CpuModels {', '.join(models)}: armcpu leaves this VM unchanged until one selector drops it")
    STATE.ambiguous_reported -= result.selected - set(result.ambiguous)
    if result.patches:
        log.info("patched VMs", extra={"cpumodel": name, "vms": ["/".join(k) for k in result.patches if k not in failed]})
    return counts, pending, ok


async def reconcile_once(name: str, body: kopf.Body, indexes: dict[str, Any]) -> bool:
    start = time.monotonic()
    observed_status = copy.deepcopy(dict(body.get("status") or {})) or None
    status = STATE.status_view(name, observed_status)
    spec: dict[str, Any] = copy.deepcopy(dict(body.spec))
    obj = {"metadata": {"name": name, "generation": body.meta.get("generation")}, "spec": spec, "status": status}
    nodes = STATE.labels_view(STATE.node_labels)
    vmis = dict(STATE.vmi_definitions)
    running: dict[str, int] = {}
    for revision in _running_of(name, vmis).values():
        running[revision] = running.get(revision, 0) + 1
    result = plan.reconcile(obj, nodes, STATE.node_profiles, _now(), running=running, kernel_verification=RUNTIME.kernel_verification)
    kube = _kube()
    STATE.remember_labels(result.label_changes)  # before sending: the echo may arrive before the response
    try:
        failed = await asyncio.to_thread(act.apply_labels, kube, result.label_changes)
    except BaseException:  # a remembered write that was never made would hide the label from every later plan
        STATE.forget_labels(result.label_changes)
        raise
    STATE.forget_labels(failed)
    vms_ok = True
    if result.applied is not None:  # None: the spec in effect is unknown (an invalid spec over a status older than appliedSpec), VMs stay
        vm_counts, pending, vms_ok = await reconcile_vms(name, result.applied, result.status, indexes, vmis)
        if result.status.get("model") is not None or (status or {}).get("vms"):
            result.status["vms"] = vm_counts
            plan.add_restart_condition(result.status, (status or {}).get("conditions") or [], pending, body.meta.get("generation"), _now())
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
    return not failed and vms_ok


RETRY_FIRST, RETRY_MAX = 2.0, 300.0


def retry_delay(failures: int) -> float:
    """Seconds before the next try after ``failures`` failed reconciles in a row: 2, 4, 8, ... up to 5 min.
    Any event still wakes the model at once; this only spaces the retries nothing asked for."""
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1)))


@kopf.daemon(GROUP, VERSION, "cpumodels", cancellation_timeout=5.0)
async def reconcile_loop(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    """Level-based: reconcile at start, whenever an event can affect this model, and every resync."""
    trigger = STATE.triggers.setdefault(name, asyncio.Event())
    trigger.set()
    failures = 0  # consecutive failed reconciles of this model: its retries back off, other models' do not
    metrics.MODELS.inc()
    try:
        while not STATE.listed() and not stopped:  # as kopf does for its indexes: start from a full view
            await asyncio.sleep(0.2)
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
                ok = await reconcile_once(name, body, kwargs)
            except Exception as exc:  # never let one bad reconcile kill the loop
                ok = False
                log.exception("reconcile failed", extra={"cpumodel": name, "error": str(exc)})
            failures = 0 if ok else failures + 1
            if failures:
                metrics.RECONCILE_ERRORS.labels(name).inc()
                asyncio.get_running_loop().call_later(retry_delay(failures), trigger.set)
    finally:
        metrics.MODELS.dec()


@kopf.on.delete(GROUP, VERSION, "cpumodels")
async def cleanup(name: str, **kwargs: Any) -> None:
    """The CpuModel is going away: its label leaves every node before the finalizer is removed."""
    while not STATE.listed():
        await asyncio.sleep(0.2)
    changes = plan.removal(name, STATE.labels_view(STATE.node_labels))
    failed = await asyncio.to_thread(act.apply_labels, _kube(), changes)
    if failed:
        raise kopf.TemporaryError(f"could not remove {plan.label_key(name)} from {', '.join(failed)}", delay=10)
    STATE.remember_labels(changes)
    # restore every VM it patched: with no vmSelector and no model, the plan takes armcpu's additions back out
    view = STATE.vms_view(STATE.vm_store)
    restore = vms.plan_for_model(name, None, None, view, {})
    if await send_vm_patches(name, restore):
        raise kopf.TemporaryError(f"could not restore every VM {name} had patched; retrying", delay=5)
    if not await hookmaps.sync(_kube(), STATE, {**view, **restore.targets}, _hooked_vmis(STATE.vmi_definitions)):
        raise kopf.TemporaryError("could not remove the domain hook ConfigMaps no VM needs any more; retrying", delay=5)
    STATE.triggers.pop(name, None)
    metrics.forget(name)
    log.info("cpumodel deleted; labels removed", extra={"cpumodel": name, "nodes": sorted(changes)})


# ------------------------------------------------------------------ admission

async def validate_cpumodel(spec: kopf.Spec, meta: kopf.Meta, **kwargs: Any) -> None:
    """The same checks the reconciler reports as Invalid; failurePolicy Ignore, so a down operator
    never blocks kubectl (the reconciler then reports the problem on the object).

    Only a spec being written is judged: an update that leaves the spec as it was (finalizers,
    labels, annotations; kopf's own bookkeeping) or that comes with deletion under way always
    passes, so a CpuModel whose spec became invalid while the webhook was down can still be
    deleted and its finalizer removed."""
    old: kopf.Body | None = kwargs.get("old")  # the stored object, on UPDATE
    if meta.get("deletionTimestamp") or (old is not None and dict(old.get("spec") or {}) == dict(spec)):
        return
    request = specs.parse(copy.deepcopy(dict(spec)))
    if request.errors:
        raise kopf.AdmissionError("; ".join(request.errors), code=422)


async def mutate_vm(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    """Dress a VM that exactly one CpuModel selects, so it never starts without its model. The
    reconciler does the same afterwards (the backstop for VMs created while the webhook was down)."""
    vm_labels = (body.get("metadata") or {}).get("labels") or {}
    matched = [m for m, claim in _single(kwargs["model_vm_selectors"]).items() if vms.claims(claim, vm_labels)]
    if len(matched) != 1:
        return  # none, or ambiguous: left unchanged (the reconciler posts the Event)
    definition = _single(kwargs["model_definitions"]).get(matched[0])
    if not definition or not selectors.matches(definition.get("vmSelector") or {}, vm_labels) or not definition.get("vmSelector"):
        return  # no model computed yet, or only a spec not in effect selects it
    key = ((body.get("metadata") or {}).get("namespace") or "", (body.get("metadata") or {}).get("name") or "")
    started = STATE.vmi_definitions.get(key)  # async: runs on the loop that updates the dict, never beside it
    running = started[1] if started is not None and started[0] == matched[0] else None
    desired = vms.for_running(vms.desired_from(matched[0], definition, definition.get("enforcement")), running, definition.get("live") or ())
    carried = vms.current_revision(body) if vms.uses(body) == matched[0] else None
    if carried is not None and carried.isdigit() and int(carried) > desired.revision:
        return  # the reconciler already moved it to a revision this replica's index has not seen yet: never move it back

    def dress(raw: kopf.RawBody) -> None:
        goal = vms.target(raw, desired)
        mutable = cast(dict[str, Any], raw)
        mutable.clear()
        mutable.update(goal)

    patch.fns.append(dress)


def register_webhook() -> None:
    """Registered only when main() configures a webhook server (kopf refuses handlers without one)."""
    kopf.on.validate(GROUP, VERSION, "cpumodels", id="validate-cpumodel", operations=["CREATE", "UPDATE"],
                     ignore_failures=True)(validate_cpumodel)
    kopf.on.mutate("kubevirt.io", "v1", "virtualmachines", id="mutate-vm", operations=["CREATE", "UPDATE"],
                   ignore_failures=True)(mutate_vm)
