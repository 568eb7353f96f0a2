"""A proposed pool as a CpuModel a user can ``kubectl apply``.

The pool is selected by the agent's own labels (``armcpu.io/fingerprint`` and
``armcpu.io/kernel-series``), so the manifest selects exactly the nodes the advisor counted, on any
cluster whose agents publish them, and nothing the user has to label first. VMs opt in with a
``cpu-pool`` label of the model's name, as in ``examples/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from armcpu.advisor import STOCK, NodeClass, Proposal
from armcpu.guarantee import HOOK_SIDECAR, SCHEDULING
from armcpu_k8s import group, labels

VM_LABEL = "cpu-pool"


def name_of(proposal: Proposal, classes: Sequence[NodeClass]) -> str:
    """``pool-<series>-<8 hex digits of its units>``: stable for the same nodes, a valid label key suffix."""
    units = sorted({c.unit for c in classes if c.id in proposal.class_ids})
    digest = hashlib.sha256(repr(units).encode()).hexdigest()[:8]
    series = proposal.island.replace(".", "-")
    return f"pool-{series}-{digest}"


def cpumodel(proposal: Proposal, classes: Sequence[NodeClass]) -> dict[str, Any]:
    """The CpuModel for ``proposal``. Enforcement: ``Scheduling`` when the guarantee holds on stock QEMU,
    else ``HookSidecar`` (which needs the SYSREG-capable QEMU the proposal was made for)."""
    chosen = [c for c in classes if c.id in proposal.class_ids]
    name = name_of(proposal, classes)
    stock_safe = proposal.guarantees[STOCK.name].safe and STOCK.name in proposal.fronts
    return {
        "apiVersion": group.API_VERSION,
        "kind": "CpuModel",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchExpressions": [
                {"key": labels.FINGERPRINT, "operator": "In", "values": sorted({c.fingerprint for c in chosen})},
                {"key": labels.KERNEL_SERIES, "operator": "In", "values": sorted({c.kernel_series for c in chosen})},
            ]},
            "vmSelector": {"matchLabels": {VM_LABEL: name}},
            "enforcement": SCHEDULING if stock_safe else HOOK_SIDECAR,
        },
    }
