"""In-memory bookkeeping between the watches (kopf's, and :mod:`armcpu_operator.listwatch`'s) and the
per-CpuModel reconcile loops.

Which CpuModels a Node or NodeCpuProfile event can affect is decided here (so a node heartbeat
wakes nobody), and writes the operator made but the watch has not delivered yet are remembered,
so a reconcile that runs before the echo arrives does not write the same thing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from armcpu_k8s import labels as keys
from armcpu_k8s import selectors
from armcpu_operator import vms


@dataclass
class State:
    triggers: dict[str, asyncio.Event] = field(default_factory=dict)
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # every Node's labels
    node_profiles: dict[str, Any] = field(default_factory=dict)  # node -> plan.ParsedProfile of its NodeCpuProfile
    model_generations: dict[str, int | None] = field(default_factory=dict)
    written_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    written_labels: dict[str, dict[str, str | None]] = field(default_factory=dict)
    vm_labels: dict[tuple[str, str], tuple[dict[str, str], str | None]] = field(default_factory=dict)
    written_vms: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    ambiguous_reported: set[tuple[str, str]] = field(default_factory=set)
    vmi_definitions: dict[tuple[str, str], tuple[str, str, bool]] = field(default_factory=dict)
    vm_store: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # every VM, as vms.subset
    nodes_listed: asyncio.Event = field(default_factory=asyncio.Event)
    profiles_listed: asyncio.Event = field(default_factory=asyncio.Event)
    vms_listed: asyncio.Event = field(default_factory=asyncio.Event)
    vmis_listed: asyncio.Event = field(default_factory=asyncio.Event)
    vm_selectors: dict[str, Any] = field(default_factory=dict)  # CpuModel -> its vmSelector (None while deleted)
    model_selectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # CpuModel -> its nodeSelector
    watches: list[Any] = field(default_factory=list)  # the running listwatch.ListWatch threads
    hook_configmaps: dict[str, str] | None = None  # namespace -> script held; None: not listed yet
    hook_configmaps_listed: float = 0.0

    def listed(self) -> bool:
        """Every directly watched collection has been listed once: a reconcile starts from a full view."""
        return all(e.is_set() for e in (self.nodes_listed, self.profiles_listed, self.vms_listed, self.vmis_listed))

    def trigger(self, model: str) -> None:
        self.triggers.setdefault(model, asyncio.Event()).set()

    def affected_by_node(self, old: Mapping[str, str], new: Mapping[str, str],
                         model_selectors: Mapping[str, Mapping[str, Any]]) -> list[str]:
        if dict(old) == dict(new):
            return []
        return [
            name for name, selector in model_selectors.items()
            if selectors.matches(selector, old) or selectors.matches(selector, new)
            or any(keys.owned_by_model(k, name) for k in (*old, *new))
        ]

    def node_event(self, name: str, labels: Mapping[str, str] | None, model_selectors: Mapping[str, Mapping[str, Any]]) -> list[str]:
        old = self.node_labels.get(name, {})
        new = dict(labels) if labels is not None else {}
        if labels is None:
            self.node_labels.pop(name, None)
        else:
            self.node_labels[name] = new
        return self.affected_by_node(old, new, model_selectors)

    def profile_event(self, node: str, model_selectors: Mapping[str, Mapping[str, Any]]) -> list[str]:
        labels = self.node_labels.get(node, {})
        return [name for name, selector in model_selectors.items()
                if selectors.matches(selector, labels) or any(keys.owned_by_model(k, name) for k in labels)]

    def model_event(self, name: str, generation: int | None, deleted: bool) -> bool:
        """True when the spec changed (a status write of our own changes no generation)."""
        if deleted:
            self.model_generations.pop(name, None)
            self.written_status.pop(name, None)
            return False
        changed = self.model_generations.get(name) != generation
        self.model_generations[name] = generation
        return changed

    def vm_event(self, key: tuple[str, str], vm: Mapping[str, Any] | None,
                 vm_selectors: Mapping[str, vms.Claim]) -> list[str]:
        """Models to wake for a VM change: those selecting it before or after, and the one it records."""
        old_labels, old_model = self.vm_labels.get(key, ({}, None))
        if vm is None:
            self.vm_labels.pop(key, None)
            new_labels, new_model = {}, None
        else:
            new_labels = dict((vm.get("metadata") or {}).get("labels") or {})
            new_model = vms.uses(vm)
            self.vm_labels[key] = (new_labels, new_model)
        if (old_labels, old_model) == (new_labels, new_model):
            return []
        woken = {m for m, claim in vm_selectors.items() if vms.claims(claim, old_labels) or vms.claims(claim, new_labels)}
        woken |= {m for m in (old_model, new_model) if m}
        return sorted(woken)

    def vmi_event(self, key: tuple[str, str], definition: tuple[str, str, bool] | None) -> list[str]:
        """Models whose running counts change: a VMI appeared, went, or (never in KubeVirt) changed definition."""
        old = self.vmi_definitions.pop(key, None)
        if definition is not None:
            self.vmi_definitions[key] = definition
        if old == definition:
            return []
        return sorted({d[0] for d in (old, definition) if d is not None})

    # --- writes not yet echoed by the watch

    def vms_view(self, indexed: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        out = {k: dict(v) for k, v in indexed.items()}
        for key, written in list(self.written_vms.items()):
            if key not in out or vms.roots_equal(out[key], written):
                self.written_vms.pop(key, None)
            else:
                out[key] = written
        return out

    def status_view(self, name: str, observed: Mapping[str, Any] | None) -> dict[str, Any] | None:
        written = self.written_status.get(name)
        if written is None:
            return None if observed is None else dict(observed)
        if observed is not None and dict(observed) == written:
            self.written_status.pop(name, None)
        return written

    def labels_view(self, indexed: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
        out = {n: dict(v) for n, v in indexed.items()}
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
