"""After every integration test on the shared control plane: the safety invariant still holds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_testing.waiting import WaitTimeout, wait_for
from tests.operator_harness import unsafe_vms


@pytest.fixture(autouse=True)
def safety_invariant(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "control_plane" not in request.fixturenames:
        return  # tests with a control plane of their own check it themselves
    admin = Kube(load_kubeconfig(request.getfixturevalue("control_plane").kubeconfig))
    found: list[str] = []

    def safe() -> bool:
        try:
            found[:] = unsafe_vms(admin)
        except ApiError as exc:  # e.g. 429 while a test's CRD update re-initialises storage
            found[:] = [f"could not read the cluster: {exc}"]
            return False
        return not found

    try:  # an operator may still be converging when a test ends: a violation must persist to count
        wait_for(safe, 15, "the safety invariant")
    except WaitTimeout:
        pytest.fail("safety invariant violated: " + "; ".join(found[:5]))
