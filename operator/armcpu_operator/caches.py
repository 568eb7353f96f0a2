"""The operator's typed caches: one store per kind, each updated only by its watch, and the writes the
operator made that the watches have not echoed yet.

Watches deliver here (on the asyncio loop: :mod:`armcpu_operator.listwatch` posts each batch with
``call_soon_threadsafe``, and kopf's handlers are ``async``), so nothing is shared across threads.
Each delivery decides which CpuModels it can affect (a node heartbeat wakes nobody; the exact echo
of our own patch wakes nobody). :meth:`Caches.world` freezes the stores into the
:class:`~armcpu_operator.planning.world.World` one reconcile plans from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from armcpu.guarantee import STOCK, Vmm
from armcpu.profile import Profile
from armcpu_k8s import labels as keys
from armcpu_k8s import selectors
from armcpu_operator.planning import plan, vms
from armcpu_operator.planning.world import VmiDefinition, World

Key = tuple[str, str]  # (namespace or "", name)


def _replacing(store: Mapping[Any, Any], changes: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """A full list replaces the store: what it no longer has was deleted while we were not watching."""
    listed = dict(changes)
    return [*changes, *((key, None) for key in store if key not in listed)]


class ProfileParser:
    """Parses NodeCpuProfiles for the profile watch (its thread alone calls it), sharing one parsed
    profile among nodes whose profiles are equal but for the name: a large pool has a few kinds of
    node, and a parsed profile takes about 11 KiB (55 MiB for 5,000 nodes if each kept its own)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._shared: dict[str, Profile] = {}

    def __call__(self, item: Mapping[str, Any]) -> plan.ParsedProfile:
        name = (item.get("metadata") or {}).get("name") or ""
        raw = dict(item.get("spec") or {})
        raw.pop("name", None)
        key = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        shared = self._shared.get(key)
        if shared is not None:
            return shared if shared.name == name else dataclasses.replace(shared, name=name)
        parsed = plan.parse_profile(name, raw)
        if isinstance(parsed, Profile):
            if len(self._shared) >= self.limit:
                self._shared.clear()
            self._shared[key] = parsed
        return parsed


def _echoes(kept: vms.Stored, written: vms.Stored) -> bool:
    """The watch shows what we wrote (in the subtrees armcpu writes)."""
    return kept[0] == written[0] or vms.roots_equal(json.loads(kept[0]), json.loads(written[0]))


@dataclass
class Caches:
    triggers: dict[str, asyncio.Event] = field(default_factory=dict)
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # every Node's labels
    node_profiles: dict[str, plan.ParsedProfile] = field(default_factory=dict)  # node -> its NodeCpuProfile, parsed
    vm_store: dict[Key, bytes] = field(default_factory=dict)  # every VM, as vms.subset keeps it, encoded (vms.encode)
    vm_index: dict[Key, vms.Summary] = field(default_factory=dict)  # every VM's labels, the model it records, its hook
    vmi_definitions: dict[Key, VmiDefinition] = field(default_factory=dict)  # running VMs armcpu dressed
    model_generations: dict[str, int | None] = field(default_factory=dict)
    vm_selectors: dict[str, vms.Claim] = field(default_factory=dict)  # CpuModel -> the vmSelector(s) it claims by (None while deleted)
    model_selectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # CpuModel -> its nodeSelector
    written_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    written_labels: dict[str, dict[str, str | None]] = field(default_factory=dict)
    written_vms: dict[Key, vms.Stored] = field(default_factory=dict)
    ambiguous_reported: set[Key] = field(default_factory=set)
    unhooked_reported: set[Key] = field(default_factory=set)
    unstartable_reported: set[Key] = field(default_factory=set)
    hook_configmaps: dict[str, str] | None = None  # namespace -> script held; None: not listed yet
    hook_configmaps_listed: float = 0.0  # monotonic time of the last list
    nodes_listed: asyncio.Event = field(default_factory=asyncio.Event)
    profiles_listed: asyncio.Event = field(default_factory=asyncio.Event)
    vms_listed: asyncio.Event = field(default_factory=asyncio.Event)
    vmis_listed: asyncio.Event = field(default_factory=asyncio.Event)
    garbage: asyncio.Event = field(default_factory=asyncio.Event)  # set: a CpuModel went; look for what it left
    scope: asyncio.Event = field(default_factory=asyncio.Event)  # set: a vmSelector changed; narrow the VM webhook again

    def listed(self) -> bool:
        """Every directly watched collection has been listed once: a reconcile starts from a full view."""
        return all(e.is_set() for e in (self.nodes_listed, self.profiles_listed, self.vms_listed, self.vmis_listed))

    def trigger(self, model: str) -> None:
        self.triggers.setdefault(model, asyncio.Event()).set()

    # --- the world one reconcile plans from

    def world(self, now: str, *, hook_script: str, kernel_verification: str, vmm: Vmm = STOCK) -> World:
        encoded, index = self.vms_view()
        return World(
            now=now,
            nodes=MappingProxyType(self.labels_view()),
            profiles=MappingProxyType(dict(self.node_profiles)),
            vms=vms.VmTable(MappingProxyType(encoded)),
            vm_index=MappingProxyType(index),
            vmis=MappingProxyType(dict(self.vmi_definitions)),
            claims=MappingProxyType(dict(self.vm_selectors)),
            hook_configmaps=MappingProxyType(dict(self.hook_configmaps)) if self.hook_configmaps is not None else None,
            hook_script=hook_script,
            reported_ambiguous=frozenset(self.ambiguous_reported),
            reported_unhooked=frozenset(self.unhooked_reported),
            reported_unstartable=frozenset(self.unstartable_reported),
            kernel_verification=kernel_verification,
            vmm=vmm,
        )

    # --- deliveries from the watches (each on the loop)

    def nodes_changed(self, changes: list[tuple[Key, dict[str, str] | None]], replace: bool) -> None:
        """Nodes' labels: keep them, and wake the models a change can affect, except for the exact
        echo of our own label patch."""
        if replace:
            changes = _replacing({("", n): None for n in self.node_labels}, changes)
        for (_, name), node_labels in changes:
            before = self.node_labels.get(name)
            if node_labels is not None and before == node_labels:
                continue  # relisted unchanged, or only fields armcpu does not read changed
            woken = self.node_event(name, node_labels, self.model_selectors)
            written = self.written_labels.get(name)
            if node_labels is not None and written is not None and node_labels == keys.patched(before or {}, written):
                continue  # exactly the echo of our own label patch (nobody else changed anything): nothing to reconcile
            for model in woken:
                self.trigger(model)
        if replace:
            self.nodes_listed.set()

    def profiles_changed(self, changes: list[tuple[Key, plan.ParsedProfile | None]], replace: bool) -> None:
        """NodeCpuProfiles, parsed once per change (in the watch thread): keep them, wake the models of their node."""
        if replace:
            changes = _replacing({("", n): None for n in self.node_profiles}, changes)
        for (_, name), parsed in changes:
            if parsed == self.node_profiles.get(name):
                continue
            if parsed is None:
                self.node_profiles.pop(name, None)
            else:
                self.node_profiles[name] = parsed
            for model in self.profile_event(name, self.model_selectors):
                self.trigger(model)
        if replace:
            self.profiles_listed.set()

    def vms_changed(self, changes: list[tuple[Key, vms.Stored | None]], replace: bool) -> None:
        """VMs: keep the store, wake the models a change can affect, and recognise the echo of our own patches."""
        if replace:
            changes = _replacing(self.vm_store, changes)
        for key, kept in changes:
            before = self.vm_index.get(key)
            if kept is None:
                self.vm_store.pop(key, None)
            else:
                self.vm_store[key] = kept[0]
            woken = self.vm_event(key, kept[1] if kept is not None else None, self.vm_selectors)
            written = self.written_vms.get(key)
            if kept is not None and written is not None and _echoes(kept, written) and before is not None and kept[1].labels == before.labels:
                continue  # exactly the echo of our own patch: nothing new to reconcile
            self.written_vms.pop(key, None)  # the watch shows a newer state than our write (someone, or a webhook, changed it)
            for model in woken:
                self.trigger(model)
        if replace:
            self.vms_listed.set()

    def vmis_changed(self, changes: list[tuple[Key, VmiDefinition | None]], replace: bool) -> None:
        """Running VMs of armcpu's models: one started or stopped, so its model's running counts change
        (a VMI's status updates change nothing here and wake nobody)."""
        if replace:
            changes = _replacing(self.vmi_definitions, changes)
        for key, definition in changes:
            for model in self.vmi_event(key, definition):
                self.trigger(model)
        if replace:
            self.vmis_listed.set()

    def models_changed(self, name: str, generation: int | None, deleted: bool,
                       vm_selectors: Mapping[str, vms.Claim], model_selectors: Mapping[str, dict[str, Any]]) -> None:
        """A CpuModel event: keep every model's selectors (kopf's indexes), wake this one when its spec
        changed, and every model when a vmSelector changed (whether a VM is ambiguous depends on all
        of them: the model that dressed it must see that another one selects it now, or no longer)."""
        claims_before = self.vm_selectors
        self.vm_selectors = dict(vm_selectors)
        self.model_selectors = dict(model_selectors)
        if self.model_event(name, generation, deleted):
            self.trigger(name)
        if claims_before != self.vm_selectors:
            self.scope.set()
            for model in sorted(self.vm_selectors.keys() - {name}):
                self.trigger(model)

    # --- which models an event can affect

    def affected_by_node(self, old: Mapping[str, str], new: Mapping[str, str],
                         model_selectors: Mapping[str, Mapping[str, Any]]) -> list[str]:
        if dict(old) == dict(new):
            return []
        return [
            name for name, selector in model_selectors.items()
            if selectors.matches(selector, old) or selectors.matches(selector, new)
            or any(keys.owned_by_model(k, name) for k in (*old, *new))
        ]

    def node_event(self, name: str, node_labels: Mapping[str, str] | None, model_selectors: Mapping[str, Mapping[str, Any]]) -> list[str]:
        old = self.node_labels.get(name, {})
        new = dict(node_labels) if node_labels is not None else {}
        if node_labels is None:
            self.node_labels.pop(name, None)
        else:
            self.node_labels[name] = new
        return self.affected_by_node(old, new, model_selectors)

    def profile_event(self, node: str, model_selectors: Mapping[str, Mapping[str, Any]]) -> list[str]:
        node_labels = self.node_labels.get(node, {})
        return [name for name, selector in model_selectors.items()
                if selectors.matches(selector, node_labels) or any(keys.owned_by_model(k, name) for k in node_labels)]

    def model_event(self, name: str, generation: int | None, deleted: bool) -> bool:
        """True when the spec changed (a status write of our own changes no generation)."""
        if deleted:
            self.model_generations.pop(name, None)
            self.written_status.pop(name, None)
            self.garbage.set()
            return False
        changed = self.model_generations.get(name) != generation
        self.model_generations[name] = generation
        return changed

    def vm_event(self, key: Key, about: vms.Summary | None, vm_selectors: Mapping[str, vms.Claim]) -> list[str]:
        """Models to wake for a VM change: those selecting it before or after, and the one it records."""
        old = self.vm_index.pop(key, None)
        old_labels: Mapping[str, str] = old.labels if old is not None else {}
        old_model = old.model if old is not None else None
        new_labels: Mapping[str, str] = about.labels if about is not None else {}
        new_model = about.model if about is not None else None
        if about is not None:
            self.vm_index[key] = about
        if (old_labels, old_model) == (new_labels, new_model):
            return []
        woken = {m for m, claim in vm_selectors.items() if vms.claims(claim, old_labels) or vms.claims(claim, new_labels)}
        woken |= {m for m in (old_model, new_model) if m}
        return sorted(woken)

    def vmi_event(self, key: Key, definition: VmiDefinition | None) -> list[str]:
        """Models whose running counts change: a VMI appeared, went, or (never in KubeVirt) changed definition."""
        old = self.vmi_definitions.pop(key, None)
        if definition is not None:
            self.vmi_definitions[key] = definition
        if old == definition:
            return []
        return sorted({d.model for d in (old, definition) if d is not None})

    # --- writes not yet echoed by the watch

    def vms_view(self) -> tuple[dict[Key, bytes], dict[Key, vms.Summary]]:
        """Every VM (encoded) and its summary, with our patches the watch has not echoed yet."""
        encoded, index = dict(self.vm_store), dict(self.vm_index)
        for key, written in list(self.written_vms.items()):
            if key not in encoded or _echoes((encoded[key], index[key]), written):
                self.written_vms.pop(key, None)
            else:
                encoded[key], index[key] = written
        return encoded, index

    def status_view(self, name: str, observed: Mapping[str, Any] | None) -> dict[str, Any] | None:
        written = self.written_status.get(name)
        if written is None:
            return None if observed is None else dict(observed)
        if observed is not None and dict(observed) == written:
            self.written_status.pop(name, None)
        return written

    def labels_view(self) -> dict[str, Mapping[str, str]]:
        out: dict[str, Mapping[str, str]] = dict(self.node_labels)
        for node, patch in list(self.written_labels.items()):
            if node not in out:
                self.written_labels.pop(node, None)
                continue
            expected = keys.patched(out[node], patch)
            if expected == out[node]:  # the watch has delivered our write
                self.written_labels.pop(node, None)
            else:
                out[node] = expected
        return out

    def forget_labels(self, nodes: Iterable[str]) -> None:
        for node in nodes:
            self.written_labels.pop(node, None)

    def remember_labels(self, changes: Mapping[str, Mapping[str, str | None]]) -> None:
        for node, patch in changes.items():
            self.written_labels.setdefault(node, {}).update(patch)
