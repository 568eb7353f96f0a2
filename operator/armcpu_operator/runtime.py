"""What the handlers need from the process that runs them (set once by main before kopf starts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from armcpu.guarantee import Vmm
from armcpu_k8s.kube import Kube


@dataclass
class Webhook:
    port: int
    host: str
    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    addr: str = "0.0.0.0"
    config_name: str | None = None  # kopf manages a ValidatingWebhookConfiguration of this name
    cert_check_seconds: float = 10.0  # how often the certificate files are read again (a renewal is served from then on)


@dataclass
class Runtime:
    kube: Kube | None = None
    webhook: Webhook | None = None
    resync_seconds: float = 300.0
    kernel_verification: str = "Required"  # --kernel-verification: Required or Advisory (armcpu_operator.plan)
    vmm: Vmm = field(default_factory=Vmm)  # --vmm-sysreg / --vmm-impl-cpu: what the cluster's QEMU can do
    debounce_seconds: float = 0.2
    vm_webhook_configuration: str | None = None  # --vm-webhook-configuration: whose mutate-vm webhook's matchConditions armcpu keeps
    extra: dict[str, object] = field(default_factory=dict)


RUNTIME = Runtime()
