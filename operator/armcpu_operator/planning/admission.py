"""What kopf's indexes keep per CpuModel, and the three admission decisions (validate a CpuModel,
dress a VM, constrain a virt-launcher boot pod), as pure functions of the objects.

The indexes read the spec *in effect* (``status.appliedSpec``), not the raw spec: a spec change that
is invalid or not computed yet moves no VM, at admission or in the reconciler.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from armcpu_k8s import api, selectors
from armcpu_k8s import labels as keys
from armcpu_operator.planning import spec as specs
from armcpu_operator.planning import vms
from armcpu_operator.planning.world import VmiDefinition


@dataclass(frozen=True)
class Definition:
    """What a VM a CpuModel selects is dressed with at admission: its current revision."""

    desired: vms.Desired
    vm_selector: Mapping[str, Any]
    live: tuple[int, ...]


def in_effect(spec: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """The spec the current revision was computed from (empty when none is)."""
    return copy.deepcopy(dict(specs.applied_spec(spec, status) or {}))


def node_selector(spec: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(spec.get("nodeSelector") or {}))


def vm_claims(spec: Mapping[str, Any], status: Mapping[str, Any], deleting: bool) -> list[dict[str, Any]] | None:
    """The VMs a model claims: by the vmSelector in effect, and by the one its spec asks for when
    that spec is valid (so a VM two models want is ambiguous even before one's change is computed).
    None while it is deleted: it releases its VMs, and the webhook must not dress them again."""
    if deleting:
        return None
    wanted = [in_effect(spec, status).get("vmSelector")]
    if specs.parse(spec).valid:
        wanted.append(copy.deepcopy(spec.get("vmSelector")))
    found = [dict(sel) for sel in wanted if sel]
    return found or None


def definition(name: str, spec: Mapping[str, Any], status: Mapping[str, Any], deleting: bool) -> Definition | None:
    """The current revision's definition, typed from the status (None: nothing to dress with)."""
    if deleting or not status.get("model") or status.get("revision") is None:
        return None
    try:
        typed = api.CpuModelStatus.model_validate(dict(status))
    except pydantic.ValidationError:
        return None  # written around the schema: the reconciler reports and rewrites it
    effect = in_effect(spec, status)
    selector = effect.get("vmSelector")
    if typed.model is None or typed.revision is None or not selector:
        return None
    return Definition(desired=vms.desired_of(name, typed, effect.get("enforcement")), vm_selector=selector,
                      live=tuple(e.revision for e in typed.liveRevisions))


def vmi_definition(vmi: Mapping[str, Any]) -> VmiDefinition | None:
    """(model, revision, started with armcpu's domain hook) as the VM's template said at its start;
    None for a VMI armcpu did not dress (it is not kept)."""
    annotations = (vmi.get("metadata") or {}).get("annotations") or {}
    if vms.T_MODEL not in annotations:
        return None
    return VmiDefinition(annotations[vms.T_MODEL], annotations.get(vms.T_REVISION, ""), vms.HOOK_ANNOTATION in annotations)


def spec_errors(spec: Mapping[str, Any], old_spec: Mapping[str, Any] | None, deleting: bool) -> tuple[str, ...]:
    """Why the validating webhook refuses a CpuModel write. Only a spec being written is judged: an
    update that leaves the spec as it was (finalizers, labels, annotations, kopf's bookkeeping) or
    comes with deletion under way always passes, so a CpuModel whose spec became invalid while the
    webhook was down can still be deleted and its finalizer removed."""
    if deleting or (old_spec is not None and dict(old_spec) == dict(spec)):
        return ()
    return specs.parse(copy.deepcopy(dict(spec))).errors


def dress_at_admission(vm: Mapping[str, Any], claims: Mapping[str, vms.Claim], definitions: Mapping[str, Definition | None],
                       vmis: Mapping[vms.VmKey, VmiDefinition]) -> dict[str, Any] | None:
    """The VM dressed with its model when exactly one CpuModel selects it and that model's current
    revision selects it too; None to leave it as it is (none, ambiguous, nothing computed yet, or a
    newer revision already on it that this replica's index has not seen)."""
    meta = vm.get("metadata") or {}
    vm_labels = meta.get("labels") or {}
    matched = [m for m, claim in claims.items() if vms.claims(claim, vm_labels)]
    if len(matched) != 1:
        return None  # none, or ambiguous: left unchanged (the reconciler posts the Event)
    found = definitions.get(matched[0])
    if found is None or not selectors.matches(found.vm_selector, vm_labels):
        return None  # no model computed yet, or only a spec not in effect selects it
    started = vmis.get((meta.get("namespace") or "", meta.get("name") or ""))
    running = started.revision if started is not None and started.model == matched[0] else None
    desired = vms.for_running(found.desired, running, set(found.live))
    carried = vms.current_revision(vm) if vms.uses(vm) == matched[0] else None
    if carried is not None and carried.isdigit() and int(carried) > desired.revision:
        return None  # the reconciler already moved it to a revision this replica's index has not seen yet: never move it back
    return vms.target(vm, desired)



LAUNCHER_LABEL = ("kubevirt.io", "virt-launcher")  # KubeVirt labels every virt-launcher pod so
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"  # ...and a migration's target pod with the migration's UID
PLACEMENT_ANNOTATION = f"{keys.DOMAIN}/placement"  # what this webhook added to a pod, for whoever reads it


def boot_pod_requirements(pod: Mapping[str, Any]) -> dict[str, str]:
    """The nodeSelector entries a virt-launcher *boot* pod must also carry: for each armcpu model the
    VM's nodeSelector names (``cpumodel.armcpu.io/<model>: <revision>``, copied by KubeVirt from the
    VMI), ``start.cpumodel.armcpu.io/<model>: <revision>``, the nodes the guarantee lets a VM boot on.

    A migration target pod (labelled with the migration's UID) gets nothing: it goes wherever the
    model key admits, the nodes that accept the guest the source booted. Decided from the pod alone,
    at its creation: no lookup, so nothing can race (the x86 host-model pattern of KubeVirt, which
    constrains the target pod, mirrored: here the boot pod is the one narrowed).
    """
    meta = pod.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    if pod_labels.get(LAUNCHER_LABEL[0]) != LAUNCHER_LABEL[1] or MIGRATION_JOB_LABEL in pod_labels:
        return {}
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    wanted = {keys.start_key(key[len(keys.MODEL_PREFIX):]): value for key, value in selector.items()
              if isinstance(key, str) and key.startswith(keys.MODEL_PREFIX) and isinstance(value, str)}
    return {key: value for key, value in wanted.items() if selector.get(key) != value}


def constrain_boot_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """``pod`` with :func:`boot_pod_requirements` added to its nodeSelector and recorded in an
    annotation; None when nothing is to add."""
    adding = boot_pod_requirements(pod)
    if not adding:
        return None
    out = copy.deepcopy(dict(pod))
    spec = out.setdefault("spec", {})
    spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **adding}
    meta = out.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), PLACEMENT_ANNOTATION: ",".join(sorted(adding))}
    return out


VM_WEBHOOK = "mutate-vm.armcpu.io"  # the VM webhook's name, in the chart's configuration and in kopf's
VM_CONDITION = "selected-by-a-cpumodel"
MAX_CONDITION_CHARS = 10_000  # beyond this the API server is asked to call for every VM again (CEL's cost stays small)
_LABELS = "object.metadata.labels"


def vm_webhook_condition(claims: Mapping[str, vms.Claim]) -> str:
    """The CEL expression the API server evaluates before calling the VM webhook: true for a VM some
    CpuModel's vmSelector (in effect, or asked for) matches, the only VMs the webhook can change.

    Without it every VM create and update in the cluster went to the webhook, so while the operator
    hung each one waited the webhook's timeout, selected or not. A selector that selects nothing here
    (empty, or malformed: :func:`armcpu_k8s.selectors.check`) adds nothing; no models: ``false``; too
    many terms: ``true`` (every VM is sent, as before)."""
    terms = set()
    for claim in claims.values():
        for selector in [claim] if isinstance(claim, Mapping) else list(claim or []):
            if selector and not selectors.check(selector, "vmSelector"):
                terms.add(_cel(selector))
    if not terms:
        return "false"
    expression = " || ".join(f"({term})" for term in sorted(terms))
    return expression if len(expression) <= MAX_CONDITION_CHARS else "true"


def _cel(selector: Mapping[str, Any]) -> str:
    """One label selector as CEL over the admitted object's labels (an object without labels has none)."""

    def q(text: str) -> str:
        return json.dumps(text)  # a JSON string is a CEL string literal (\u escapes included)

    def has(key: str) -> str:
        return f"(has({_LABELS}) && {q(key)} in {_LABELS})"

    parts = [f"({has(k)} && {_LABELS}[{q(k)}] == {q(v)})" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], "[" + ", ".join(q(v) for v in expr.get("values") or []) + "]"
        parts.append({"In": f"({has(key)} && {_LABELS}[{q(key)}] in {values})",
                      "NotIn": f"(!{has(key)} || !({_LABELS}[{q(key)}] in {values}))",
                      "Exists": has(key), "DoesNotExist": f"!{has(key)}"}[op])
    return " && ".join(parts)
