"""Pure planning: what the agent wants on its Node and its NodeCpuProfile, and the smallest change.

No I/O here; :mod:`node_agent.publish` does the two GETs and at most two writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from armcpu import features, midr, migration
from armcpu.profile import MAX_VERIFICATIONS, Profile, ProfileError, from_dict, to_dict
from armcpu.verification import verification_key
from armcpu_k8s import group, labels, selectors

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def cpu_label(profile: Profile) -> str:
    """Implementer and part of each core type, e.g. ``arm-neoverse-v2`` or ``arm-cortex-a53.arm-cortex-a72``."""
    parts = sorted({midr.decode(core.midr).label_value() for core in profile.cores} or {midr.decode(profile.midr).label_value()})
    value = ".".join(parts)[:63].strip("-_.")
    return value if _LABEL_VALUE.match(value) else "unknown"


def desired_labels(profile: Profile, feature_labels: bool = False) -> dict[str, str]:
    out = {
        labels.FINGERPRINT: profile.fingerprint,
        labels.CPU: cpu_label(profile),
        labels.PROBE: profile.probe or "unknown",
        labels.KERNEL_SERIES: migration.kernel_series(profile.kernel) or "unknown",
    }
    if feature_labels:
        for name in features.decode(profile.registers):
            out[labels.FEATURE_PREFIX + name] = "true"
    return out


def label_patch(current: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str | None]:
    """Merge-patch entries: set what differs, remove (None) agent keys no longer wanted, touch nothing else."""
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    for key in current:
        if labels.is_agent_key(key) and key not in desired:
            patch[key] = None
    return patch


def profile_object(node: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    """The NodeCpuProfile for ``node``: named after it and owned by it (deleted with the Node by GC)."""
    meta = node["metadata"]
    return {
        "apiVersion": group.API_VERSION,
        "kind": "NodeCpuProfile",
        "metadata": {
            "name": meta["name"],
            "labels": {labels.FINGERPRINT: profile.fingerprint},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta["uid"]}],
        },
        "spec": to_dict(profile),
    }


def profile_needs_update(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    meta, want = existing.get("metadata", {}), desired["metadata"]
    return (
        existing.get("spec") != desired["spec"]
        or any(meta.get("labels", {}).get(k) != v for k, v in want["labels"].items())
        or meta.get("ownerReferences") != want["ownerReferences"]
    )


@dataclass(frozen=True)
class Target:
    """A model this node's kernel should give its verdict on: a revision of a CpuModel whose pool holds the node."""

    model: str
    revision: int
    key: str  # armcpu.verification.verification_key of the registers
    registers: Mapping[str, int]


def verification_targets(cpumodels: Sequence[Mapping[str, Any]], node_labels: Mapping[str, str],
                         limit: int = MAX_VERIFICATIONS) -> list[Target]:
    """The current and live revisions of every CpuModel whose nodeSelector selects this node, one
    per distinct model (two CpuModels with the same registers share a verdict), newest first.
    A CpuModel whose selector or registers cannot be read is skipped: the operator reports it."""
    found: dict[str, Target] = {}
    for cpumodel in cpumodels:
        name = str((cpumodel.get("metadata") or {}).get("name", ""))
        spec, status = cpumodel.get("spec") or {}, cpumodel.get("status") or {}
        try:
            if not selectors.matches(spec.get("nodeSelector") or {}, node_labels):
                continue
        except (selectors.SelectorError, TypeError, AttributeError):
            continue
        revisions: list[tuple[Any, Any]] = []
        if isinstance(status.get("model"), Mapping):
            revisions.append((status.get("revision"), status["model"].get("registers")))
        revisions += [(e.get("revision"), e.get("registers")) for e in status.get("liveRevisions") or [] if isinstance(e, Mapping)]
        for revision, raw in revisions:
            registers = _registers(raw)
            if registers is None or not isinstance(revision, int):
                continue
            key = verification_key(registers)
            if key not in found or found[key].revision < revision:
                found[key] = Target(name, revision, key, registers)
    return sorted(found.values(), key=lambda t: (-t.revision, t.model, t.key))[:limit]


def _registers(raw: object) -> dict[str, int] | None:
    if not isinstance(raw, Mapping) or not raw:
        return None
    try:
        return dict(from_dict({"registers": dict(raw)}, "model").registers)
    except ProfileError:
        return None
