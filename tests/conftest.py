"""Fixtures: the local control plane (session-scoped, real kube-apiserver + etcd)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from armcpu_testing.controlplane import ControlPlane, running


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One real control plane for the whole session; stopped and removed even when tests fail."""
    with running() as plane:
        yield plane
