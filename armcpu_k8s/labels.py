"""Label and annotation keys armcpu owns. Everything armcpu writes on Nodes and VMs is under these.

The agent owns ``armcpu.io/`` and ``feature.armcpu.io/`` keys on its own Node; the operator owns
``cpumodel.armcpu.io/`` keys on Nodes. Neither touches the other's keys, and neither ever writes
``kubevirt.io``, ``node-labeller.kubevirt.io`` or ``feature.node.kubernetes.io`` keys.
"""

from __future__ import annotations

from collections.abc import Mapping

DOMAIN = "armcpu.io"
FINGERPRINT = f"{DOMAIN}/fingerprint"
CPU = f"{DOMAIN}/cpu"
PROBE = f"{DOMAIN}/probe"
FEATURE_PREFIX = f"feature.{DOMAIN}/"
AGENT_PREFIXES = (f"{DOMAIN}/", FEATURE_PREFIX)
MODEL_PREFIX = f"cpumodel.{DOMAIN}/"
FOREIGN_PREFIXES = ("kubevirt.io/", "node-labeller.kubevirt.io/", "cpu-model.node.kubevirt.io/", "feature.node.kubernetes.io/")


def patched(labels: Mapping[str, str], patch: Mapping[str, str | None]) -> dict[str, str]:
    """Labels after a merge patch (``None`` removes a key)."""
    out = dict(labels)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def is_agent_key(key: str) -> bool:
    return key.startswith(AGENT_PREFIXES)


def is_model_key(key: str) -> bool:
    return key.startswith(MODEL_PREFIX)
