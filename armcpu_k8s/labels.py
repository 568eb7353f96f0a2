"""Label and annotation keys armcpu owns. Everything armcpu writes on Nodes and VMs is under these.

The agent owns ``armcpu.io/`` and ``feature.armcpu.io/`` keys on its own Node; the operator owns
``cpumodel.armcpu.io/<model>`` (a VM of the current revision may run here: boot or receive a migration),
``start.cpumodel.armcpu.io/<model>`` (a VM of the current revision may boot here: the pod webhook
requires it of boot pods) and ``r<N>.cpumodel.armcpu.io/<model>`` (an older revision N still running on
some VM, whose guests this node can also receive) keys on Nodes. Neither touches the other's keys, and neither ever writes
``kubevirt.io``, ``node-labeller.kubevirt.io`` or ``feature.node.kubernetes.io`` keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

DOMAIN = "armcpu.io"
FINGERPRINT = f"{DOMAIN}/fingerprint"
CPU = f"{DOMAIN}/cpu"
PROBE = f"{DOMAIN}/probe"
KERNEL_SERIES = f"{DOMAIN}/kernel-series"  # e.g. 6.12: guests move only between nodes of one series (armcpu.migration)
FEATURE_PREFIX = f"feature.{DOMAIN}/"
AGENT_PREFIXES = (f"{DOMAIN}/", FEATURE_PREFIX)
MODEL_PREFIX = f"cpumodel.{DOMAIN}/"
START_PREFIX = f"start.{MODEL_PREFIX}"
_REVISION_KEY = re.compile(rf"^r([1-9][0-9]*)\.cpumodel\.{re.escape(DOMAIN)}/(.+)$")
# On a VM's template (and so on its VMI): the model, revision and fingerprint it is dressed for
VM_MODEL, VM_REVISION, VM_FINGERPRINT = f"{DOMAIN}/cpumodel", f"{DOMAIN}/revision", f"{DOMAIN}/fingerprint"
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
    return key.startswith((MODEL_PREFIX, START_PREFIX)) or _REVISION_KEY.match(key) is not None


def start_key(model: str) -> str:
    """The node label saying a VM of ``model``'s current revision may boot on the node."""
    return START_PREFIX + model


def revision_key(model: str, revision: int) -> str:
    """The node label saying a node can run revision ``revision`` of ``model`` (kept while VMs run it)."""
    return f"r{revision}.{MODEL_PREFIX}{model}"


def revision_of_key(key: str, model: str) -> int | None:
    """N for ``r<N>.cpumodel.armcpu.io/<model>``, else None."""
    found = _REVISION_KEY.match(key)
    return int(found.group(1)) if found and found.group(2) == model else None


def model_of_key(key: str) -> str | None:
    """The CpuModel an operator-owned node label is for (``cpumodel.``, ``start.cpumodel.`` or
    ``r<N>.cpumodel.armcpu.io/<model>``), else None."""
    for prefix in (START_PREFIX, MODEL_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix):] or None
    found = _REVISION_KEY.match(key)
    return found.group(2) if found else None


def owned_by_model(key: str, model: str) -> bool:
    """A node label the operator writes for ``model``: its current revision (placement or boot) or an older live one."""
    return key in (MODEL_PREFIX + model, START_PREFIX + model) or revision_of_key(key, model) is not None
