"""The API server's own throttling (API Priority and Fairness rejecting a flow with 429 and a
Retry-After): armcpu's client waits as told and sends again, so a burst gets through instead of
failing a reconcile. A priority level with one seat and ``Reject`` makes the server throttle a
test user on demand."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig, outcome
from armcpu_testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration
USER = "throttled-user"
APF = """\
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {name: armcpu-test-tiny}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 1
    lendablePercent: 0
    limitResponse: {type: Reject}
---
# an idle level with a huge share: the test level's share of the server's seats rounds down to one
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {name: armcpu-test-idle}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 100000
    lendablePercent: 0
    limitResponse: {type: Reject}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: armcpu-test-tiny}
spec:
  priorityLevelConfiguration: {name: armcpu-test-tiny}
  matchingPrecedence: 100
  rules:
  - subjects: [{kind: User, user: {name: throttled-user}}]
    resourceRules: [{verbs: ["*"], apiGroups: ["*"], resources: ["*"], clusterScope: true, namespaces: ["*"]}]
    nonResourceRules: [{verbs: ["*"], nonResourceURLs: ["*"]}]
"""


def _burst(kube: Kube, count: int = 40) -> list[BaseException | None]:
    def one(_: int) -> BaseException | None:
        try:
            kube.get("/openapi/v2")  # large and slow to serve: requests overlap
        except (ApiError, OSError) as exc:
            return exc
        return None

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_a_throttled_burst_gets_through_by_waiting_as_the_server_says(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", "-", input=APF)
    try:
        kube = Kube(load_kubeconfig(control_plane.kubeconfig_for(USER, group=None)), max_retry_after=1.0, throttle_retries=30)
        impatient = dataclasses.replace(kube, throttle_retries=0)
        refused: list[BaseException] = []
        for _ in range(10):  # one seat: a burst of 40 collides; a few bursts make it certain
            refused = [exc for exc in _burst(impatient) if exc is not None]
            if refused:
                break
        assert refused and all(isinstance(e, ApiError) and e.status == 429 for e in refused), refused[:3]
        assert all(outcome(e) == "retry" for e in refused)
        assert any(isinstance(e, ApiError) and e.retry_after is not None for e in refused), "the server says when to come back"
        assert [exc for exc in _burst(kube, 20) if exc is not None] == []
    finally:
        control_plane.kubectl("delete", "flowschema/armcpu-test-tiny", "prioritylevelconfiguration/armcpu-test-tiny",
                              "prioritylevelconfiguration/armcpu-test-idle", "--ignore-not-found")
