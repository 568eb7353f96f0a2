"""The API server itself bounds what one node's profile can hold (issue 19: an 800 KB register name
passed the schema and froze the status of every CpuModel selecting that node)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from armcpu.profile import to_dict
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import make_profile

pytestmark = pytest.mark.integration
PROFILES = "/apis/armcpu.io/v1alpha1/nodecpuprofiles"


def _profile(name: str) -> dict[str, object]:
    spec = to_dict(replace(make_profile(name, "kvm-guest/graviton4-neoverse-v2-host6.18.json"), name=name))
    return {"apiVersion": "armcpu.io/v1alpha1", "kind": "NodeCpuProfile", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize(("where", "why"), [
    ("registers", "register names are at most 41 characters"),
    ("writable_masks", "register names are at most 41 characters"),
    ("vcpu_features", "Too long: may not be more than 32 bytes"),
])
def test_oversized_profile_keys_are_refused_at_admission(control_plane: ControlPlane, where: str, why: str) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    body = _profile(f"huge-{where.replace('_', '-')}")
    spec = json.loads(json.dumps(body["spec"]))
    huge = "ID_" + "X" * 100_000 + "_EL1"
    if where == "vcpu_features":
        spec["kvm"]["vcpu_features"] = [huge]
    else:
        spec[where] = {**(spec.get(where) or {}), huge: "0x1"}
    with pytest.raises(ApiError) as refused:
        admin.create(PROFILES, {**body, "spec": spec})
    assert refused.value.status == 422 and why in refused.value.message, refused.value.message[:500]
    admin.create(PROFILES, body)  # the same profile without the oversized key is accepted
    admin.delete(f"{PROFILES}/{body['metadata']['name']}")  # type: ignore[index]
