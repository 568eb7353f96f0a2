"""The user's path through a real API server: kubectl apply, read back with armcpu's API client,
and the API server's own validation of KubeVirt's real VirtualMachine schema."""

from __future__ import annotations

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: default
  labels: {{app: roundtrip}}
spec:
  runStrategy: {run_strategy}
  template:
    spec:
      domain:
        cpu: {{model: host-passthrough, cores: 2}}
        devices: {{}}
        memory: {{guest: 1Gi}}
"""


def api(plane: ControlPlane) -> Kube:
    return Kube(load_kubeconfig(plane.kubeconfig))


def test_kubevirt_crds_are_served(control_plane: ControlPlane) -> None:
    names = control_plane.kubectl("get", "crds", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/virtualmachines.kubevirt.io" in names
    version = control_plane.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.35.4"' in version


def test_applied_vm_reads_back_through_the_api_client(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("apply", "-f", "-", input=VM.format(name="rt-ok", run_strategy="Halted"))
    assert "virtualmachine.kubevirt.io/rt-ok created" in out.stdout
    vm = api(control_plane).get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/rt-ok")
    assert vm["spec"]["runStrategy"] == "Halted"
    assert vm["spec"]["template"]["spec"]["domain"]["cpu"] == {"model": "host-passthrough", "cores": 2}
    assert vm["metadata"]["labels"] == {"app": "roundtrip"}


def test_api_server_rejects_a_malformed_vm_with_its_own_message(control_plane: ControlPlane) -> None:
    bad = VM.format(name="rt-bad", run_strategy="Halted").replace("cores: 2", "cores: two")
    proc = control_plane.kubectl("apply", "-f", "-", input=bad, check=False)
    assert proc.returncode != 0
    assert 'The VirtualMachine "rt-bad" is invalid' in proc.stderr
    assert "spec.template.spec.domain.cpu.cores" in proc.stderr
    missing = control_plane.kubectl("get", "virtualmachine", "rt-bad", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_unknown_fields_are_pruned_by_the_structural_schema(control_plane: ControlPlane) -> None:
    doc = VM.format(name="rt-prune", run_strategy="Halted").replace(
        "  runStrategy: Halted", "  runStrategy: Halted\n  armcpuBogus: 1"
    )
    proc = control_plane.kubectl("apply", "--validate=false", "-f", "-", input=doc)
    assert proc.returncode == 0
    vm = api(control_plane).get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/rt-prune")
    assert "armcpuBogus" not in vm["spec"]
