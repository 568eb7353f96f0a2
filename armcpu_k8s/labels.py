"""Label and annotation keys armcpu owns. Everything armcpu writes on Nodes and VMs is under these.

The agent owns ``armcpu.io/`` and ``feature.armcpu.io/`` keys on its own Node; the operator owns
``cpumodel.armcpu.io/`` keys on Nodes. Neither touches the other's keys, and neither ever writes
``kubevirt.io``, ``node-labeller.kubevirt.io`` or ``feature.node.kubernetes.io`` keys.
"""

from __future__ import annotations

DOMAIN = "armcpu.io"
FINGERPRINT = f"{DOMAIN}/fingerprint"
CPU = f"{DOMAIN}/cpu"
PROBE = f"{DOMAIN}/probe"
FEATURE_PREFIX = f"feature.{DOMAIN}/"
AGENT_PREFIXES = (f"{DOMAIN}/", FEATURE_PREFIX)
MODEL_PREFIX = f"cpumodel.{DOMAIN}/"
FOREIGN_PREFIXES = ("kubevirt.io/", "node-labeller.kubevirt.io/", "cpu-model.node.kubevirt.io/", "feature.node.kubernetes.io/")


def is_agent_key(key: str) -> bool:
    return key.startswith(AGENT_PREFIXES)


def is_model_key(key: str) -> bool:
    return key.startswith(MODEL_PREFIX)
