"""What ``armcpu-operator cleanup --stop`` asks of the API server for each of the release's objects."""

from __future__ import annotations

import pytest

from armcpu_operator.cleanup import NOWHERE, Stop


def test_each_kind_stops_its_own_way() -> None:
    assert Stop.parse("deployment/armcpu-operator").request("armcpu") == (
        "PATCH", "/apis/apps/v1/namespaces/armcpu/deployments/armcpu-operator", {"spec": {"replicas": 0}})
    assert Stop.parse("DaemonSet/armcpu-agent").request("armcpu") == (
        "PATCH", "/apis/apps/v1/namespaces/armcpu/daemonsets/armcpu-agent",
        {"spec": {"template": {"spec": {"nodeSelector": {"armcpu.io/uninstalling": "true"}}}}})
    assert Stop.parse("validatingwebhookconfiguration/armcpu-cpumodels").request("armcpu") == (
        "DELETE", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/armcpu-cpumodels", None)
    assert Stop.parse("mutatingwebhookconfiguration/armcpu-launcher-pods").request("elsewhere") == (
        "DELETE", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/armcpu-launcher-pods", None)


def test_the_agents_are_kept_off_every_node_by_a_key_no_node_carries() -> None:
    from armcpu_k8s import labels

    [(key, _)] = NOWHERE.items()
    assert labels.is_agent_key(key), "armcpu's own prefix, so the cleanup would remove it from any node carrying it"


@pytest.mark.parametrize("ref", ["deployment", "deployment/", "statefulset/x", "/x", "pod/x"])
def test_a_bad_reference_is_refused_with_the_kinds_allowed(ref: str) -> None:
    with pytest.raises(ValueError, match=r"want KIND/NAME with KIND one of validatingwebhookconfiguration, "
                                         r"mutatingwebhookconfiguration, deployment, daemonset"):
        Stop.parse(ref)
