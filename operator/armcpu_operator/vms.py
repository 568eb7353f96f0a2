"""Pure planning for KubeVirt VirtualMachines: what armcpu adds to a VM that uses a CpuModel, and the
JSON patch that gets it there from whatever the VM holds now — or takes exactly that back out.

What armcpu adds (and nothing else):

- ``spec.template.spec.nodeSelector["cpumodel.armcpu.io/<model>"] = "<revision>"``: an own key of the
  nodeSelector ANDs with whatever affinity the user wrote, so the VM (and every migration target)
  lands only on nodes labelled compatible. The user's affinity terms are never touched.
- ``spec.template.metadata.annotations`` ``armcpu.io/cpumodel``, ``armcpu.io/revision``,
  ``armcpu.io/fingerprint``: which model definition the guest is started with.
- ``spec.template.spec.domain.cpu.features`` entries ``{name: sve|pauth, policy: disable}`` when the
  model switches those off (the only ID-register lowering libvirt can express on aarch64); an entry
  the user already has for that name is left alone.
- ``metadata.annotations["armcpu.io/applied"]``: a record of the above (including which maps or lists
  armcpu had to create), so removal restores the VM byte for byte.

Every patch starts with JSON-patch ``test`` operations on the values it replaces, so a concurrent
edit makes the API server refuse it (422) and the next reconcile starts from the new state.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from armcpu_k8s import labels as keys
from armcpu_k8s import selectors

RECORD = f"{keys.DOMAIN}/applied"
T_MODEL, T_REVISION, T_FINGERPRINT = f"{keys.DOMAIN}/cpumodel", f"{keys.DOMAIN}/revision", f"{keys.DOMAIN}/fingerprint"
LIBVIRT_FEATURES = ("sve", "pauth")

# The subtrees armcpu may change, top-down; each is compared and, if different, replaced whole
# after a `test` of its current value.
ROOTS: tuple[tuple[str, ...], ...] = (
    ("metadata", "annotations"),
    ("spec", "template", "metadata"),
    ("spec", "template", "spec", "nodeSelector"),
    ("spec", "template", "spec", "domain", "cpu"),
)


@dataclass(frozen=True)
class Desired:
    model: str
    revision: int
    fingerprint: str
    disable: tuple[str, ...] = ()


def _get(obj: Any, path: Sequence[str]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(obj, Mapping) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def _ensure(obj: dict[str, Any], path: Sequence[str], created: list[str], name: str, empty: Any) -> Any:
    parent = obj
    for part in path[:-1]:
        parent = parent.setdefault(part, {})
    if path[-1] not in parent or parent[path[-1]] is None:
        parent[path[-1]] = empty
        created.append(name)
    return parent[path[-1]]


def _drop_if_empty(obj: dict[str, Any], path: Sequence[str]) -> None:
    found, value = _get(obj, path)
    if found and not value:
        exists, parent = _get(obj, path[:-1])
        if exists:
            del parent[path[-1]]


def record_of(vm: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = ((vm.get("metadata") or {}).get("annotations") or {}).get(RECORD)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("cpumodel"), str) else None


def strip(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The VM as it was before armcpu touched it (per its record)."""
    out = copy.deepcopy(dict(vm))
    record = record_of(vm)
    if record is None:
        return out
    created = set(record.get("created") or [])
    model = record["cpumodel"]
    found, selector = _get(out, ("spec", "template", "spec", "nodeSelector"))
    if found and isinstance(selector, dict):
        selector.pop(keys.MODEL_PREFIX + model, None)
    found, annotations = _get(out, ("spec", "template", "metadata", "annotations"))
    if found and isinstance(annotations, dict):
        for key in (T_MODEL, T_REVISION, T_FINGERPRINT):
            annotations.pop(key, None)
    found, features = _get(out, ("spec", "template", "spec", "domain", "cpu", "features"))
    if found and isinstance(features, list):
        added = set(record.get("features") or [])
        features[:] = [f for f in features if not (f.get("name") in added and f.get("policy") == "disable")]
    meta_annotations = out.get("metadata", {}).get("annotations") or {}
    meta_annotations.pop(RECORD, None)
    for name, path in (("nodeSelector", ("spec", "template", "spec", "nodeSelector")),
                       ("templateAnnotations", ("spec", "template", "metadata", "annotations")),
                       ("features", ("spec", "template", "spec", "domain", "cpu", "features")),
                       ("cpu", ("spec", "template", "spec", "domain", "cpu")),
                       ("templateMetadata", ("spec", "template", "metadata")),
                       ("annotations", ("metadata", "annotations"))):
        if name in created:
            _drop_if_empty(out, path)
    return out


def dress(original: Mapping[str, Any], desired: Desired) -> dict[str, Any]:
    """``original`` with armcpu's additions for ``desired``, and the record of them."""
    out = copy.deepcopy(dict(original))
    created: list[str] = []
    selector = _ensure(out, ("spec", "template", "spec", "nodeSelector"), created, "nodeSelector", {})
    selector[keys.MODEL_PREFIX + desired.model] = str(desired.revision)
    _ensure(out, ("spec", "template", "metadata"), created, "templateMetadata", {})
    annotations = _ensure(out, ("spec", "template", "metadata", "annotations"), created, "templateAnnotations", {})
    annotations.update({T_MODEL: desired.model, T_REVISION: str(desired.revision), T_FINGERPRINT: desired.fingerprint})
    added: list[str] = []
    if desired.disable:
        _ensure(out, ("spec", "template", "spec", "domain", "cpu"), created, "cpu", {})
        features = _ensure(out, ("spec", "template", "spec", "domain", "cpu", "features"), created, "features", [])
        present = {f.get("name") for f in features}
        for name in desired.disable:
            if name not in present:
                features.append({"name": name, "policy": "disable"})
                added.append(name)
    meta_annotations = _ensure(out, ("metadata", "annotations"), created, "annotations", {})
    meta_annotations[RECORD] = json.dumps({"cpumodel": desired.model, "created": created, "features": added}, separators=(",", ":"))
    return out


def target(vm: Mapping[str, Any], desired: Desired | None) -> dict[str, Any]:
    original = strip(vm)
    return original if desired is None else dress(original, desired)


def _pointer(path: Sequence[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def patch(vm: Mapping[str, Any], desired: Desired | None) -> list[dict[str, Any]]:
    """JSON-patch operations from ``vm`` to its target; empty when it is already there."""
    want = target(vm, desired)
    ops: list[dict[str, Any]] = []
    for root in ROOTS:
        has, current = _get(vm, root)
        wants, value = _get(want, root)
        if (has, current) == (wants, value):
            continue
        if has:
            ops.append({"op": "test", "path": _pointer(root), "value": current})
            ops.append({"op": "replace", "path": _pointer(root), "value": value} if wants else {"op": "remove", "path": _pointer(root)})
        elif wants:
            # create at the deepest existing ancestor, carrying the target subtree
            depth = len(root)
            while depth > 1 and not _get(vm, root[: depth - 1])[0]:
                depth -= 1
            path = root[:depth]
            ops.append({"op": "add", "path": _pointer(path), "value": _get(want, path)[1]})
    return ops


def uses(vm: Mapping[str, Any]) -> str | None:
    """The CpuModel armcpu applied to this VM, if any."""
    record = record_of(vm)
    return record["cpumodel"] if record else None


def current_revision(vm: Mapping[str, Any]) -> str | None:
    found, annotations = _get(vm, ("spec", "template", "metadata", "annotations"))
    return annotations.get(T_REVISION) if found and isinstance(annotations, Mapping) else None


VmKey = tuple[str, str]  # (namespace, name)


@dataclass
class VmPlan:
    patches: dict[VmKey, list[dict[str, Any]]]
    targets: dict[VmKey, dict[str, Any]]
    ambiguous: dict[VmKey, list[str]]
    counts: dict[str, int]
    selected: set[VmKey]


def plan_for_model(model: str, desired: Desired | None, vm_selector: Mapping[str, Any] | None,
                   vms: Mapping[VmKey, Mapping[str, Any]], other_selectors: Mapping[str, Mapping[str, Any] | None]) -> VmPlan:
    """Patches for every VM this model selects or once patched. A VM that another model's vmSelector
    also matches is ambiguous and left as it is; without a computed model, selected VMs wait."""
    patches: dict[VmKey, list[dict[str, Any]]] = {}
    targets: dict[VmKey, dict[str, Any]] = {}
    ambiguous: dict[VmKey, list[str]] = {}
    counts = {"selected": 0, "current": 0, "ambiguous": 0}
    selected: set[VmKey] = set()
    for key, vm in sorted(vms.items()):
        vm_labels = (vm.get("metadata") or {}).get("labels") or {}
        mine = bool(vm_selector) and selectors.matches(vm_selector or {}, vm_labels)
        if not mine and uses(vm) != model:
            continue
        if mine:
            counts["selected"] += 1
            selected.add(key)
            others = sorted(m for m, sel in other_selectors.items() if m != model and sel and selectors.matches(sel, vm_labels))
            if others:
                ambiguous[key] = sorted([model, *others])
                counts["ambiguous"] += 1
                continue
            if desired is None:
                continue
        want = desired if mine else None
        ops = patch(vm, want)
        goal = target(vm, want)
        if mine and desired is not None and current_revision(goal) == str(desired.revision):
            counts["current"] += 1
        if ops:
            patches[key] = ops
            targets[key] = goal
    return VmPlan(patches=patches, targets=targets, ambiguous=ambiguous, counts=counts, selected=selected)


def subset(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps in memory per VM: identity, labels, and the subtrees it may change."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion", "kubevirt.io/v1"),
        "kind": body.get("kind", "VirtualMachine"),
        "metadata": {k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "uid", "labels", "annotations") if k in meta},
        "spec": {"template": {}},
    }
    template = (body.get("spec") or {}).get("template") or {}
    if "metadata" in template:
        out["spec"]["template"]["metadata"] = copy.deepcopy(template["metadata"])
    spec = template.get("spec")
    if spec is not None:
        small: dict[str, Any] = {}
        if "nodeSelector" in spec:
            small["nodeSelector"] = copy.deepcopy(spec["nodeSelector"])
        if "domain" in spec:
            small["domain"] = {"cpu": copy.deepcopy(spec["domain"]["cpu"])} if "cpu" in (spec["domain"] or {}) else {}
        out["spec"]["template"]["spec"] = small
    return out


def roots_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(_get(a, root) == _get(b, root) for root in ROOTS)
