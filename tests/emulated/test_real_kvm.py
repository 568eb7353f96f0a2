"""The agent against a real Linux KVM: each QEMU CPU model booted (TCG, EL2) under each kernel of the
guest image, the agent run inside with /dev/kvm and again without it. The same checks as the unit tests
on the recordings, on what the live kernels answer now, and the live answers equal the recordings
wherever the kernel is the one recorded."""

from __future__ import annotations

import pytest

from armcpu.model import can_run, combine
from armcpu.profile import from_dict
from armcpu_testing import emulated, truth
from tests import emulated_checks as checks
from tests.emulated.conftest import Phase1
from tests.unit.test_emulated_recordings import MRS_EXCEPTIONS

pytestmark = pytest.mark.emulated
CPUS = truth.CPUS


@pytest.fixture(scope="module")
def hosts(phase1: Phase1) -> list[checks.Host]:
    runs = phase1.runs
    out = []
    for (cpu, kernel), run in runs.items():
        assert run.files.get("kvm.rc") == b"0\n" and run.files.get("mrs.rc") == b"0\n", (cpu, kernel, run.console[-3000:])
        name = emulated.node_name(cpu, kernel)
        profiles = {k: from_dict(run.json(f"{k}.json"), name) for k in ("kvm", "mrs")}
        out.append(checks.Host(cpu, kernel, profiles["kvm"], profiles["mrs"], run.json("kvm-conversation.json")))
    return out


def test_every_host_passes_the_recording_checks(hosts: list[checks.Host]) -> None:
    assert len(hosts) == len(CPUS) * len({h.kernel for h in hosts}) and len({h.kernel for h in hosts}) >= 2
    for host in hosts:
        checks.check_probe(host)
        checks.check_features(host)
        checks.check_writable_masks(host)
        checks.check_mrs_agrees(host, MRS_EXCEPTIONS.get(host.cpu, set()))
        checks.check_conversation_shape(host)


def test_live_answers_equal_the_recordings_for_the_same_kernel(hosts: list[checks.Host]) -> None:
    recorded = {(h.cpu, h.kernel): h for h in checks.load_recordings()}
    compared = 0
    for host in hosts:
        old = recorded.get((host.cpu, host.kernel))
        if old is None:
            continue  # Debian moved to a newer kernel since the recording: the checks above still ran
        compared += 1
        assert host.conversation["calls"] == old.conversation["calls"]
        assert host.conversation["one_reg"] == old.conversation["one_reg"]
        assert host.conversation["writable_masks"] == old.conversation["writable_masks"]
    print(f"compared {compared} of {len(hosts)} hosts with their recordings")


def test_a_common_model_of_cortex_a76_and_neoverse_n1_runs_on_both_under_the_newest_kernel(hosts: list[checks.Host]) -> None:
    newest = max({h.kernel for h in hosts}, key=emulated.release_key)
    pair = [h.kvm for h in hosts if h.kernel == newest and h.cpu in ("cortex-a76", "neoverse-n1")]
    result = combine(pair)
    assert result.feasible, [b.message() for b in result.blockers]
    for profile in pair:
        assert can_run(profile, result.model).ok
