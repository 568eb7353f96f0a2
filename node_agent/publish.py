"""The one I/O step: bring the node's NodeCpuProfile and labels in line with a fresh profile.

Two GETs, then a write only where something differs, so a cycle on an unchanged node writes
nothing. The profile is replaced with a PUT carrying the resourceVersion that was read (a
concurrent change gives 409 and the next cycle retries); labels change through a merge patch that
names only the agent's own keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from armcpu.profile import Profile
from armcpu_k8s.kube import ApiError, Kube
from armcpu_k8s.resources import NODECPUPROFILES, NODES
from node_agent import plan


@dataclass(frozen=True)
class Published:
    profile_written: str | None  # "created", "updated" or None
    labels_changed: tuple[str, ...]


class NodeMissing(Exception):
    pass


def publish(kube: Kube, node_name: str, profile: Profile, feature_labels: bool = False, node: Any = None) -> Published:
    """``node``: the Node as the caller just read it (saves a GET), else read here."""
    node = node if node is not None else kube.get_or_none(NODES.item(node_name))
    if node is None:
        raise NodeMissing(f"node {node_name!r} does not exist (is --node-name / NODE_NAME right?)")
    desired = plan.profile_object(node, profile)
    path = NODECPUPROFILES.item(node_name)
    existing = kube.get_or_none(path)
    written = None
    if existing is None:
        kube.create(NODECPUPROFILES.collection(), desired)
        written = "created"
    elif plan.profile_needs_update(existing, desired):
        body = dict(desired)
        body["metadata"] = {**desired["metadata"], "resourceVersion": existing["metadata"]["resourceVersion"],
                            "labels": {**existing["metadata"].get("labels", {}), **desired["metadata"]["labels"]}}
        kube.request("PUT", path, body)
        written = "updated"
    patch = plan.label_patch(node["metadata"].get("labels", {}), plan.desired_labels(profile, feature_labels))
    if patch:
        try:
            kube.merge_patch(NODES.item(node_name), {"metadata": {"labels": patch}})
        except ApiError as exc:
            raise ApiError(exc.status, exc.reason, f"labelling node {node_name}: {exc.message}", "PATCH", f"nodes/{node_name}") from None
    return Published(profile_written=written, labels_changed=tuple(sorted(patch)))
