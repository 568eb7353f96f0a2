"""kopf registration only: each decorator hands its arguments to the module that does the job.

- CpuModels: kopf's indexes (:mod:`armcpu_operator.planning.admission` says what they keep), an
  event handler that feeds :class:`~armcpu_operator.caches.Caches`, a daemon per model running
  :func:`armcpu_operator.reconciler.run` and a deletion handler (:func:`armcpu_operator.reconciler.remove`);
- Nodes, NodeCpuProfiles, VMs and VMIs: :mod:`armcpu_operator.listwatch` watches them directly (kopf's
  per-event cost is too high for collections that size, and kopf then writes nothing on them);
- the webhooks: the decisions are :func:`admission.spec_errors`, :func:`admission.dress_at_admission` and
  :func:`admission.constrain_boot_pod`.

Every handler is ``async``: it runs on the event loop that owns the caches, never in kopf's thread pool.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf

from armcpu_k8s.group import GROUP, VERSION
from armcpu_k8s.kube import Kube
from armcpu_k8s.resources import NODECPUPROFILES, NODES, VMIS, VMS
from armcpu_operator import listwatch, reconciler, webhookscope
from armcpu_operator.caches import Caches, ProfileParser
from armcpu_operator.planning import admission, vms
from armcpu_operator.runtime import RUNTIME

CACHES = Caches()
WATCHES: list[listwatch.ListWatch[Any]] = []
TASKS: list[asyncio.Task[None]] = []


def _kube() -> Kube:
    assert RUNTIME.kube is not None, "main() sets RUNTIME.kube before kopf starts"
    return RUNTIME.kube


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
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
            cafile=str(hook.cafile) if hook.cafile else None, file_check_interval=hook.cert_check_seconds,
        )
        if hook.config_name:
            settings.admission.managed = hook.config_name


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's connection, from the operator's one credential path (kubeconfig, exec plugin or
    in-cluster, as :func:`armcpu_k8s.kube.load_credentials` read them): kopf and armcpu's client
    always talk to the same server as the same user. kopf logs in again on a 401, and before an
    exec plugin's token expires."""
    creds = _kube().credentials
    token = await asyncio.to_thread(creds.bearer)  # an exec plugin may run here: never on the loop
    return kopf.ConnectionInfo(server=creds.server, ca_path=str(creds.ca_file) if creds.ca_file else None, ca_data=creds.ca_pem,
                               certificate_data=creds.cert_pem, private_key_data=creds.key_pem, token=token,
                               scheme="Bearer" if token else None,
                               expiration=creds.exec_plugin.expires if creds.exec_plugin is not None else None)


# ------------------------------------------------------------------ indexes (memory, no LIST per event)

@kopf.index(GROUP, VERSION, "cpumodels")
async def model_selectors(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: admission.node_selector(spec)}


@kopf.index(GROUP, VERSION, "cpumodels")
async def model_vm_selectors(name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any) -> dict[str, Any]:
    return {name: admission.vm_claims(dict(spec), dict(status), bool(meta.get("deletionTimestamp")))}


@kopf.index(GROUP, VERSION, "cpumodels")
async def model_definitions(name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any) -> dict[str, Any]:
    return {name: admission.definition(name, dict(spec), dict(status), bool(meta.get("deletionTimestamp")))}


def _single(index: Any) -> dict[Any, Any]:
    return {key: next(iter(store)) for key, store in index.items() if len(store)}


# ------------------------------------------------------------------ watches and events

def _labels_of(node: dict[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


@kopf.on.startup()
async def start_watches(**_: Any) -> None:
    loop = asyncio.get_running_loop()
    WATCHES[:] = [
        listwatch.ListWatch(_kube(), loop, NODES.collection(), _labels_of, CACHES.nodes_changed, what="nodes", metadata_only=True),
        listwatch.ListWatch(_kube(), loop, NODECPUPROFILES.collection(), ProfileParser(), CACHES.profiles_changed, what="nodecpuprofiles"),
        listwatch.ListWatch(_kube(), loop, VMS.collection(), vms.stored, CACHES.vms_changed, what="virtualmachines"),
        listwatch.ListWatch(_kube(), loop, VMIS.collection(), admission.vmi_definition, CACHES.vmis_changed,
                            what="virtualmachineinstances", metadata_only=True),
    ]
    for watch in WATCHES:
        watch.start()
    TASKS[:] = [asyncio.create_task(reconciler.garbage_loop(_kube(), CACHES, RUNTIME), name="garbage")]
    if RUNTIME.vm_webhook_configuration:
        TASKS.append(asyncio.create_task(webhookscope.loop(_kube(), CACHES, RUNTIME, RUNTIME.vm_webhook_configuration), name="scope"))


@kopf.on.cleanup()
async def stop_watches(**_: Any) -> None:
    for watch in WATCHES:
        watch.stop.set()
    for task in TASKS:
        task.cancel()


@kopf.on.event(GROUP, VERSION, "cpumodels")
async def model_event(type: str, name: str, meta: kopf.Meta, **kwargs: Any) -> None:
    CACHES.models_changed(name, meta.get("generation"), type == "DELETED",
                          _single(kwargs["model_vm_selectors"]), _single(kwargs["model_selectors"]))


# ------------------------------------------------------------------ reconcile and delete

@kopf.daemon(GROUP, VERSION, "cpumodels", cancellation_timeout=5.0)
async def reconcile_loop(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await reconciler.run(_kube(), CACHES, RUNTIME, name, body, stopped)


@kopf.on.delete(GROUP, VERSION, "cpumodels")
async def cleanup(name: str, **_: Any) -> None:
    await reconciler.remove(_kube(), CACHES, RUNTIME, name)


# ------------------------------------------------------------------ admission

async def validate_cpumodel(spec: kopf.Spec, meta: kopf.Meta, **kwargs: Any) -> None:
    """The same checks the reconciler reports as Invalid; failurePolicy Ignore, so a down operator
    never blocks kubectl (the reconciler then reports the problem on the object)."""
    old: kopf.Body | None = kwargs.get("old")  # the stored object, on UPDATE
    errors = admission.spec_errors(dict(spec), dict(old.get("spec") or {}) if old is not None else None, bool(meta.get("deletionTimestamp")))
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


async def mutate_vm(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    """Dress a VM that exactly one CpuModel selects, so it never starts without its model. The
    reconciler does the same afterwards (the backstop for VMs created while the webhook was down)."""
    goal = admission.dress_at_admission(dict(body), _single(kwargs["model_vm_selectors"]), _single(kwargs["model_definitions"]),
                                        CACHES.vmi_definitions)
    if goal is not None:
        _admit_as(patch, goal)


async def mutate_launcher_pod(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Boot pods of armcpu-dressed VMs start only where the guarantee lets a VM boot (the nodes whose
    own view is the model, under Scheduling); migration target pods are left as KubeVirt made them."""
    goal = admission.constrain_boot_pod(dict(body))
    if goal is not None:
        _admit_as(patch, goal)


def _admit_as(patch: kopf.Patch, goal: dict[str, Any]) -> None:
    """Make kopf answer the admission request with the JSON patch that turns the object into ``goal``."""

    def replace(raw: kopf.RawBody) -> None:
        mutable = cast(dict[str, Any], raw)
        mutable.clear()
        mutable.update(goal)

    patch.fns.append(replace)


def register_webhook() -> None:
    """Registered only when main() configures a webhook server (kopf refuses handlers without one)."""
    kopf.on.validate(GROUP, VERSION, "cpumodels", id="validate-cpumodel", operations=["CREATE", "UPDATE"],
                     ignore_failures=True)(validate_cpumodel)
    kopf.on.mutate("kubevirt.io", "v1", "virtualmachines", id="mutate-vm", operations=["CREATE", "UPDATE"],
                   ignore_failures=True)(mutate_vm)
    kopf.on.mutate("", "v1", "pods", id="mutate-launcher-pod", operations=["CREATE"], ignore_failures=True,
                   labels={admission.LAUNCHER_LABEL[0]: admission.LAUNCHER_LABEL[1]})(mutate_launcher_pod)
