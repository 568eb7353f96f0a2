"""Other projects' CRDs the chart's optional parts need (prometheus-operator, cert-manager), taken
from their published Go modules at pinned versions — the real schemas, checksummed by the Go
module mirror, so `helm install` with every option on is validated by the API server as in a real
cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

MODULES = {
    # module@version: directory inside the module holding the CRD files
    "github.com/prometheus-operator/prometheus-operator@v0.85.0": "example/prometheus-operator-crd",
    "github.com/cert-manager/cert-manager@v1.21.2": "deploy/crds",
}
WANTED = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_podmonitors.yaml",
          "monitoring.coreos.com_prometheusrules.yaml", "cert-manager.io_issuers.yaml", "cert-manager.io_certificates.yaml",
          "cert-manager.io_clusterissuers.yaml")


def crd_files() -> list[Path]:
    files = []
    for module, sub in MODULES.items():
        out = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True, check=True, timeout=600)
        directory = Path(json.loads(out.stdout)["Dir"]) / sub
        files += [directory / name for name in WANTED if (directory / name).exists()]
    return files
