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
- with ``enforcement: HookSidecar`` (and a model that lowers something): template annotations
  ``armcpu.io/qemu-cpu`` / ``armcpu.io/qemu-machine`` that armcpu's onDefineDomain hook
  (:mod:`armcpu_k8s.domain_hook`) turns into QEMU arguments, and armcpu's entry in the template's
  ``hooks.kubevirt.io/hookSidecars`` list (appended to the user's list, if any, and taken out alone);
- ``metadata.annotations["armcpu.io/applied"]``: a record of the above (including which maps or lists
  armcpu had to create, the user's own values under armcpu's keys, and the VM's uid), so removal
  restores the VM byte for byte (:func:`record_of` says which records are believed).

Every patch starts with JSON-patch ``test`` operations on the values it replaces, so a concurrent
edit makes the API server refuse it (422) and the next reconcile starts from the new state.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from armcpu_k8s import api, domain_hook, selectors
from armcpu_k8s import labels as keys

RECORD = f"{keys.DOMAIN}/applied"
T_MODEL, T_REVISION, T_FINGERPRINT = keys.VM_MODEL, keys.VM_REVISION, keys.VM_FINGERPRINT
LIBVIRT_FEATURES = ("sve", "pauth")
HOOK_SIDECARS = "hooks.kubevirt.io/hookSidecars"
HOOK_ANNOTATION = domain_hook.CPU_ANNOTATION
HOOK_CONFIGMAP = "armcpu-domain-hook"
HOOK_KEY = "onDefineDomain"
# What KubeVirt's sidecar-shim needs to run armcpu's script as the onDefineDomain hook.
HOOK_ENTRY: dict[str, Any] = {
    "args": ["--version", "v1alpha2"],
    "configMap": {"name": HOOK_CONFIGMAP, "key": HOOK_KEY, "hookPath": "/usr/bin/onDefineDomain"},
}

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
    qemu_cpu: str | None = None  # set: the domain hook starts QEMU with these -cpu properties
    qemu_machine: str | None = None
    running_revision: int | None = None  # the older revision its running VMI was started with, until it restarts


def desired_of(model: str, status: api.CpuModelStatus, enforcement: str | None) -> Desired:
    """What a VM of ``model`` gets, from the model's status (its revision, fingerprint and rendering)."""
    rendered = status.model
    if rendered is None or status.revision is None:
        raise ValueError(f"CpuModel {model} has no computed revision to dress a VM with")
    hook = enforcement == "HookSidecar" and rendered.domainRewrite == "Needed" and bool(rendered.qemu)
    return Desired(model, status.revision, str(status.fingerprint), tuple(rendered.libvirtDisabled),
                   qemu_cpu=rendered.qemu if hook else None, qemu_machine=rendered.qemuMachine if hook else None)


def _sidecars(raw: object) -> list[Any] | None:
    """The hookSidecars annotation as a list; None when it is not a JSON list (then armcpu leaves it)."""
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _get(obj: Any, path: Sequence[str]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(obj, Mapping) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def _ensure(obj: dict[str, Any], path: Sequence[str], created: list[str], name: str, empty: Any) -> Any:
    parent = obj
    for part in path[:-1]:
        if parent.get(part) is None:  # absent, or JSON null (hypothesis found `spec: null` crashed the plan)
            parent[part] = {}
        parent = parent[part]
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
    """What armcpu added to this VM, by its ``armcpu.io/applied`` record.

    A record that names another VM's uid was copied with a manifest (``kubectl get -o yaml`` of a
    dressed VM, edited and applied as a new one): it says nothing of this VM, so it is not believed.
    Without a believable record, armcpu's own dressing still names its model (the template
    annotation ``armcpu.io/cpumodel`` and that model's nodeSelector key, both under armcpu's
    prefixes): then the record is rebuilt from it, covering armcpu's keys only, so a deleted record
    no longer leaves armcpu's additions on the VM forever. Feature entries are not in a rebuilt
    record: a user may have written ``sve: disable`` too, and armcpu cannot tell, so it leaves them."""
    meta = vm.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(RECORD)
    record: Any = None
    if raw:
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
    if isinstance(record, dict) and isinstance(record.get("cpumodel"), str):
        if not (isinstance(record.get("uid"), str) and meta.get("uid") and record["uid"] != meta["uid"]):
            return record
    return _rebuilt_record(vm)


def _rebuilt_record(vm: Mapping[str, Any]) -> dict[str, Any] | None:
    found, annotations = _get(vm, ("spec", "template", "metadata", "annotations"))
    model = annotations.get(T_MODEL) if found and isinstance(annotations, Mapping) else None
    found, selector = _get(vm, ("spec", "template", "spec", "nodeSelector"))
    if not isinstance(model, str) or not found or not isinstance(selector, Mapping) or keys.MODEL_PREFIX + model not in selector:
        return None
    record: dict[str, Any] = {"cpumodel": model, "created": [], "features": [], "rebuilt": True}
    if HOOK_ENTRY in (_sidecars(annotations.get(HOOK_SIDECARS)) or []):
        record["hookSidecars"] = None
    return record


# The keys armcpu sets, per subtree: a value the user had under one of them is kept in the record
# ("previous") and put back on removal.
_OWNED_TEMPLATE_ANNOTATIONS = (T_MODEL, T_REVISION, T_FINGERPRINT, domain_hook.CPU_ANNOTATION, domain_hook.MACHINE_ANNOTATION)


def _copy(vm: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of JSON data (a VM is JSON); a little cheaper than copy.deepcopy (16 vs 20 µs for a dressed VM)."""
    copied: dict[str, Any] = json.loads(json.dumps(vm))
    return copied


def strip(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The VM as it was before armcpu touched it (per its record)."""
    out = _copy(vm)
    record = record_of(vm)
    if record is None:
        return out
    created = set(_string_items(record.get("created")))
    model = record["cpumodel"]
    kept = record.get("previous")
    previous: dict[str, Any] = kept if isinstance(kept, dict) else {}
    found, selector = _get(out, ("spec", "template", "spec", "nodeSelector"))
    if found and isinstance(selector, dict):
        for key in [k for k in selector if keys.owned_by_model(k, model)]:
            del selector[key]
        selector.update(_strings(previous.get("nodeSelector")))
    found, annotations = _get(out, ("spec", "template", "metadata", "annotations"))
    if found and isinstance(annotations, dict):
        for key in _OWNED_TEMPLATE_ANNOTATIONS:
            annotations.pop(key, None)
        if "hookSidecars" in record:
            _unhook(annotations, record["hookSidecars"])
        annotations.update(_strings(previous.get("templateAnnotations")))
    found, features = _get(out, ("spec", "template", "spec", "domain", "cpu", "features"))
    if found and isinstance(features, list):
        added = set(_string_items(record.get("features")))
        features[:] = [f for f in features
                       if not (isinstance(f, dict) and isinstance(f.get("name"), str) and f["name"] in added and f.get("policy") == "disable")]
    found, meta_annotations = _get(out, ("metadata", "annotations"))
    if found and isinstance(meta_annotations, dict):
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


def _string_items(listed: object) -> list[str]:
    """The strings of a record's list (a hand-edited record may hold anything)."""
    return [x for x in listed if isinstance(x, str)] if isinstance(listed, list) else []


def _strings(kept: object) -> dict[str, str]:
    """A record's kept user values (a hand-edited record may hold anything: only strings are put back)."""
    if not isinstance(kept, dict):
        return {}
    return {k: v for k, v in kept.items() if isinstance(k, str) and isinstance(v, str)}


def _unhook(annotations: dict[str, Any], original: object) -> None:
    """Take armcpu's entry out of hookSidecars: back to the user's exact string when nothing else changed."""
    entries = _sidecars(annotations.get(HOOK_SIDECARS))
    if entries is None:
        return
    rest = [e for e in entries if e != HOOK_ENTRY]
    if original is None and not rest:
        annotations.pop(HOOK_SIDECARS, None)
    elif isinstance(original, str) and _sidecars(original) == rest:
        annotations[HOOK_SIDECARS] = original
    else:
        annotations[HOOK_SIDECARS] = json.dumps(rest, separators=(",", ":"))


def _hook(annotations: dict[str, Any], desired: Desired) -> tuple[bool, str | None]:
    """Add the hook annotations; (added, the user's hookSidecars before) for the record."""
    if desired.qemu_cpu is None:
        return False, None
    original = annotations.get(HOOK_SIDECARS)
    entries = [] if original is None else _sidecars(original)
    if entries is None:
        return False, None  # not a JSON list: KubeVirt refuses it anyway, armcpu will not rewrite it
    annotations[domain_hook.CPU_ANNOTATION] = desired.qemu_cpu
    if desired.qemu_machine:
        annotations[domain_hook.MACHINE_ANNOTATION] = desired.qemu_machine
    if HOOK_ENTRY not in entries:
        annotations[HOOK_SIDECARS] = json.dumps([*entries, HOOK_ENTRY], separators=(",", ":"))
    return True, original


def uses_hook(vm: Mapping[str, Any]) -> bool:
    """Whether armcpu put its domain hook on this VM's template."""
    record = record_of(vm)
    return record is not None and "hookSidecars" in record


def dress(original: Mapping[str, Any], desired: Desired) -> dict[str, Any]:
    """``original`` with armcpu's additions for ``desired``, and the record of them."""
    return _dress_in_place(_copy(original), desired, ((original.get("metadata") or {}).get("uid")))


def _dress_in_place(out: dict[str, Any], desired: Desired, uid: str | None) -> dict[str, Any]:
    """``uid``: the VM's, bound into the record (None: a VM not created yet, or dressed before records had it)."""
    created: list[str] = []
    previous: dict[str, dict[str, str]] = {}
    selector = _ensure(out, ("spec", "template", "spec", "nodeSelector"), created, "nodeSelector", {})
    added_keys = [keys.MODEL_PREFIX + desired.model]
    if desired.running_revision is not None:
        # ANDed with the current key: only nodes that can run both what runs now and what starts next
        added_keys.append(keys.revision_key(desired.model, desired.running_revision))
    _keep(previous, "nodeSelector", selector, added_keys)
    selector[added_keys[0]] = str(desired.revision)
    for key in added_keys[1:]:
        selector[key] = "true"
    _ensure(out, ("spec", "template", "metadata"), created, "templateMetadata", {})
    annotations = _ensure(out, ("spec", "template", "metadata", "annotations"), created, "templateAnnotations", {})
    _keep(previous, "templateAnnotations", annotations, _OWNED_TEMPLATE_ANNOTATIONS)
    annotations.update({T_MODEL: desired.model, T_REVISION: str(desired.revision), T_FINGERPRINT: desired.fingerprint})
    hooked, sidecars_before = _hook(annotations, desired)
    added: list[str] = []
    if desired.disable:
        _ensure(out, ("spec", "template", "spec", "domain", "cpu"), created, "cpu", {})
        features = _ensure(out, ("spec", "template", "spec", "domain", "cpu", "features"), created, "features", [])
        present = {f.get("name") for f in features if isinstance(f, dict) and isinstance(f.get("name"), str)}
        for name in desired.disable:
            if name not in present:
                features.append({"name": name, "policy": "disable"})
                added.append(name)
    meta_annotations = _ensure(out, ("metadata", "annotations"), created, "annotations", {})
    record: dict[str, Any] = {"cpumodel": desired.model, "created": created, "features": added}
    if hooked:
        record["hookSidecars"] = sidecars_before
    if previous:
        record["previous"] = previous
    if uid:
        record["uid"] = uid
    meta_annotations[RECORD] = json.dumps(record, separators=(",", ":"))
    return out


def _keep(previous: dict[str, dict[str, str]], where: str, values: Mapping[str, Any], owned: Iterable[str]) -> None:
    """Note the user's own values under keys armcpu is about to set, to put them back on removal."""
    kept = {key: values[key] for key in owned if isinstance(values.get(key), str)}
    if kept:
        previous[where] = kept


def target(vm: Mapping[str, Any], desired: Desired | None) -> dict[str, Any]:
    record = record_of(vm)
    original = strip(vm)  # a copy of its own: dressed in place
    if desired is None:
        return original
    # A record written without a uid (at admission, before the VM had one; or by an older armcpu) keeps
    # having none: adding it would rewrite every such VM once for nothing.
    uid = (record or {}).get("uid") if record is not None and not record.get("rebuilt") else (vm.get("metadata") or {}).get("uid")
    return _dress_in_place(original, desired, uid if isinstance(uid, str) else None)


def _pointer(path: Sequence[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def patch(vm: Mapping[str, Any], desired: Desired | None) -> list[dict[str, Any]]:
    """JSON-patch operations from ``vm`` to its target; empty when it is already there."""
    return patch_to(vm, target(vm, desired))


def patch_to(vm: Mapping[str, Any], want: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch operations from ``vm`` to ``want`` (in the subtrees armcpu writes)."""
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


def for_running(desired: Desired, running_revision: str | None, live: Collection[int]) -> Desired:
    """``desired`` for a VM whose VMI was started with ``running_revision``: while that is an older live
    revision, the VM also requires nodes labelled able to run it (its migrations stay safe)."""
    if running_revision is None or not running_revision.isdigit() or int(running_revision) == desired.revision:
        return desired
    return replace(desired, running_revision=int(running_revision)) if int(running_revision) in live else desired


Claim = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None  # a model's vmSelector(s): the one in effect and the one asked for


def claims(claim: Claim, vm_labels: Mapping[str, str]) -> bool:
    """Whether a model claims a VM: its vmSelector in effect, or the one its spec asks for (a change
    not computed yet still makes a VM both models want ambiguous, rather than dressed by one)."""
    if not claim:
        return False
    if isinstance(claim, Mapping):
        return selectors.matches(claim, vm_labels)
    return any(sel and selectors.matches(sel, vm_labels) for sel in claim)


@dataclass
class Scan:
    """What a walk over the VMs found besides the writes: filled as :func:`walk` goes."""

    ambiguous: dict[VmKey, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"selected": 0, "current": 0, "ambiguous": 0, "domainRewrite": 0})
    selected: set[VmKey] = field(default_factory=set)
    unhooked: set[VmKey] = field(default_factory=set)  # the model wants the domain hook, the VM's hookSidecars cannot take it


class Write(NamedTuple):
    key: VmKey
    mine: bool  # selected by the model (not only once patched by it)
    current: Mapping[str, Any]  # the VM as read (a VmTable decodes at each read: not read again)
    target: dict[str, Any]
    ops: list[dict[str, Any]]


def walk(model: str, desired: Desired | None, vm_selector: Mapping[str, Any] | None,
         vms: Mapping[VmKey, Mapping[str, Any]], other_selectors: Mapping[str, Claim], scan: Scan,
         running: Mapping[VmKey, str] | None = None, live: Iterable[int] = (),
         index: Mapping[VmKey, Summary] | None = None) -> Iterator[Write]:
    """Every VM this model selects or once patched that needs a patch, one at a time (a caller can
    keep each write compact before the next is made). A VM that another model's vmSelector also
    matches is ambiguous: reported, and left undressed, or kept current by the model that dressed it
    before; without a computed model, selected VMs wait.
    ``running``: the revision each running VMI of this model was started with; ``live``: the older
    revisions nodes are still labelled for; ``index``: each VM's :class:`Summary` (so only the VMs
    that concern this model are read)."""
    live = set(live)
    counts = scan.counts
    summaries = index if index is not None else {key: summary(vm) for key, vm in vms.items()}
    for key, about in sorted(summaries.items()):
        vm_labels = about.labels
        mine = bool(vm_selector) and selectors.matches(vm_selector or {}, vm_labels)
        if not mine and about.model != model:
            continue
        vm = vms[key]
        if mine:
            counts["selected"] += 1
            scan.selected.add(key)
            others = sorted(m for m, claim in other_selectors.items() if m != model and claims(claim, vm_labels))
            if others:
                scan.ambiguous[key] = sorted([model, *others])
                counts["ambiguous"] += 1
                if about.model != model:
                    continue  # nobody dresses it until one model alone selects it (an Event says so)
                # This model dressed it before another one's selector matched it too. It stays dressed,
                # and current: left at its old revision it would require a label no node carries
                # once that revision is gone, and no node could start it.
            if desired is None:
                continue
        want = for_running(desired, (running or {}).get(key), live) if mine and desired is not None else None
        goal = target(vm, want)
        ops = patch_to(vm, goal)
        if mine and desired is not None and current_revision(goal) == str(desired.revision):
            counts["current"] += 1
        if mine and uses_hook(goal):
            counts["domainRewrite"] += 1
        elif mine and want is not None and want.qemu_cpu is not None:
            scan.unhooked.add(key)
        if ops:
            yield Write(key, mine, vm, goal, ops)


def plan_for_model(model: str, desired: Desired | None, vm_selector: Mapping[str, Any] | None,
                   vms: Mapping[VmKey, Mapping[str, Any]], other_selectors: Mapping[str, Claim],
                   running: Mapping[VmKey, str] | None = None, live: Iterable[int] = (),
                   index: Mapping[VmKey, Summary] | None = None) -> VmPlan:
    """:func:`walk`, collected: the patches and targets of every VM that needs one."""
    scan = Scan()
    patches: dict[VmKey, list[dict[str, Any]]] = {}
    targets: dict[VmKey, dict[str, Any]] = {}
    for write in walk(model, desired, vm_selector, vms, other_selectors, scan, running=running, live=live, index=index):
        patches[write.key] = write.ops
        targets[write.key] = write.target
    return VmPlan(patches=patches, targets=targets, ambiguous=scan.ambiguous, counts=scan.counts, selected=scan.selected)


def subset(body: Mapping[str, Any], *, copied: bool = True) -> dict[str, Any]:
    """What the operator keeps in memory per VM: identity, labels, and the subtrees it may change.
    ``copied=False`` shares the subtrees with ``body`` (for a body nobody else holds, about to be encoded)."""
    copy_ = copy.deepcopy if copied else _same
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion", "kubevirt.io/v1"),
        "kind": body.get("kind", "VirtualMachine"),
        "metadata": {k: copy_(meta[k]) for k in ("name", "namespace", "uid", "labels", "annotations") if k in meta},
        "spec": {"template": {}},
    }
    template = (body.get("spec") or {}).get("template") or {}
    if "metadata" in template:
        out["spec"]["template"]["metadata"] = copy_(template["metadata"])
    spec = template.get("spec")
    if spec is not None:
        small: dict[str, Any] = {}
        if "nodeSelector" in spec:
            small["nodeSelector"] = copy_(spec["nodeSelector"])
        if "domain" in spec:
            small["domain"] = {"cpu": copy_(spec["domain"]["cpu"])} if "cpu" in (spec["domain"] or {}) else {}
        out["spec"]["template"]["spec"] = small
    return out


class Summary(NamedTuple):
    """What deciding *whether* a VM concerns a model needs, kept beside its compact JSON: its labels,
    the CpuModel its record names, and whether its template carries armcpu's hook."""

    labels: Mapping[str, str]
    model: str | None
    hooked: bool


def summary(vm: Mapping[str, Any]) -> Summary:
    found = (vm.get("metadata") or {}).get("labels")
    vm_labels = {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(found, dict) else {}
    return Summary(vm_labels, uses(vm), uses_hook(vm))


Stored = tuple[bytes, Summary]  # what the operator keeps per VM


def _same(obj: Any) -> Any:
    return obj


def stored(body: Mapping[str, Any]) -> Stored:
    """A VM as the operator keeps it: its :func:`subset` encoded, and its summary (``body`` is the
    watch's freshly parsed object: nothing is copied from it)."""
    kept = subset(body, copied=False)
    return encode(kept), summary(kept)


def encode(vm: Mapping[str, Any]) -> bytes:
    """A VM (as :func:`subset` keeps it) as compact JSON: about 0.7 KiB where its dicts take about
    4.6 KiB, which is what lets the operator hold 20,000 VMs in a few tens of MiB."""
    return json.dumps(vm, separators=(",", ":"), sort_keys=True).encode()


class VmTable(Mapping[VmKey, Mapping[str, Any]]):
    """Encoded VMs read as dicts, decoded at each read and not kept (a reconcile reads only the VMs
    its model selects or once patched, found through their :class:`Summary`; keeping 20,000 decoded
    VMs for one reconcile raised the operator's RSS by about 90 MiB that it never gave back)."""

    def __init__(self, encoded: Mapping[VmKey, bytes]) -> None:
        self._encoded = encoded

    def __getitem__(self, key: VmKey) -> Mapping[str, Any]:
        decoded: Mapping[str, Any] = json.loads(self._encoded[key])
        return decoded

    def __iter__(self) -> Iterator[VmKey]:
        return iter(self._encoded)

    def __len__(self) -> int:
        return len(self._encoded)

    def __contains__(self, key: object) -> bool:
        return key in self._encoded


def roots_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(_get(a, root) == _get(b, root) for root in ROOTS)


def template_revision_of(model: str, vm: Mapping[str, Any]) -> str | None:
    """The revision of ``model`` the VM's template would start its guest with (None: another model, or none)."""
    found, annotations = _get(vm, ("spec", "template", "metadata", "annotations"))
    if not found or not isinstance(annotations, Mapping) or annotations.get(T_MODEL) != model:
        return None
    value = annotations.get(T_REVISION)
    return value if isinstance(value, str) else None


def running_revisions(model: str, vmis: Mapping[VmKey, tuple[str, str, bool]], vms_now: Mapping[VmKey, Mapping[str, Any]],
                      desired: Desired | None) -> tuple[dict[str, int], list[VmKey]]:
    """Per revision, how many VMIs of ``model`` run it; and which run another definition than their
    VM's template now carries (restart pending). ``vmis`` maps a VMI to the (model, revision) its
    annotations recorded at start; KubeVirt never changes those while it runs."""
    running: dict[str, int] = {}
    pending: list[VmKey] = []
    for key, (vmi_model, vmi_revision, _) in sorted(vmis.items()):
        if vmi_model != model:
            continue
        running[vmi_revision] = running.get(vmi_revision, 0) + 1
        vm = vms_now.get(key)
        if vm is not None:
            template_revision = template_revision_of(model, vm)
        else:  # a VMI without a VM: compare with what the model would start now
            template_revision = str(desired.revision) if desired is not None else None
        if template_revision != vmi_revision:
            pending.append(key)
    return running, pending
