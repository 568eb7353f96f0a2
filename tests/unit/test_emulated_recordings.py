"""The KVM views recorded on emulated arm64 hosts (a real Linux KVM under QEMU TCG with EL2, see
armcpu_testing/emulated.py) checked on every run without booting anything: what the probe read, how
it compares with the MRS fallback and with QEMU's CPU models, and that the replayed recording gives
the agent exactly the profile the real kernel gave it."""

from __future__ import annotations

from pathlib import Path

import pytest

from armcpu.model import can_run, combine
from node_agent.probes import kvm_ioctl, kvm_replay
from tests import emulated_checks as checks

HOSTS = checks.load_recordings()
IDS = [h.kvm.name for h in HOSTS]
# SSBS reads 0 at EL0 but 2 in KVM's guest view on Neoverse-N1, Cortex-A76, Neoverse-V1 and Neoverse-N2, and
# agrees on Cortex-A72 (no SSBS) and `max`: consistent with Linux hiding SSBS from user space on CPUs listed
# for Arm erratum 3194386 (all four are; `max` has a MIDR of its own).
MRS_EXCEPTIONS = {cpu: {("ID_AA64PFR1_EL1", "SSBS")} for cpu in ("neoverse-n1", "cortex-a76", "neoverse-v1", "neoverse-n2")}


def test_recordings_cover_six_cpu_models_under_two_kernels() -> None:
    assert {h.cpu for h in HOSTS} >= {"cortex-a72", "cortex-a76", "neoverse-n1", "neoverse-v1", "neoverse-n2", "max"}
    assert len({h.kernel for h in HOSTS}) >= 2 and len(HOSTS) == len({h.cpu for h in HOSTS}) * len({h.kernel for h in HOSTS})


@pytest.mark.parametrize("host", HOSTS, ids=IDS)
def test_the_probe_used_kvm_and_the_features_match_qemus_model(host: checks.Host) -> None:
    checks.check_probe(host)
    checks.check_features(host)


@pytest.mark.parametrize("host", HOSTS, ids=IDS)
def test_writable_masks_are_present_and_plausible_for_the_kernel(host: checks.Host) -> None:
    checks.check_writable_masks(host)


@pytest.mark.parametrize("host", HOSTS, ids=IDS)
def test_mrs_fallback_agrees_on_every_user_visible_field(host: checks.Host) -> None:
    checks.check_mrs_agrees(host, MRS_EXCEPTIONS.get(host.cpu, set()))


@pytest.mark.parametrize("host", HOSTS, ids=IDS)
def test_the_built_conversations_of_the_unit_tests_match_the_real_ones(host: checks.Host) -> None:
    checks.check_conversation_shape(host)


@pytest.mark.parametrize("host", HOSTS, ids=IDS)
def test_replaying_the_recording_gives_the_profile_the_kernel_gave(host: checks.Host, tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kvm").touch()
    result = kvm_ioctl.probe(tmp_path, kvm_replay.Replay(host.conversation))
    assert result.registers == dict(host.kvm.registers)
    assert result.writable == dict(host.kvm.writable or {})
    assert set(result.vcpu_features) == set(host.kvm.kvm.vcpu_features)
    assert result.writable_imp_id_regs == host.kvm.kvm.writable_imp_id_regs


def test_cortex_a72_and_neoverse_n1_differ_exactly_where_qemus_models_do() -> None:
    from armcpu import features

    for kernel in {h.kernel for h in HOSTS}:
        by_cpu = {h.cpu: set(features.decode(h.kvm.registers)) for h in HOSTS if h.kernel == kernel}
        # QEMU's neoverse-n1 implements AArch32 at EL0 only (as the silicon does); cortex-a72 at every EL
        assert by_cpu["cortex-a72"] - by_cpu["neoverse-n1"] == {"FEAT_AA32EL1", "FEAT_AA32EL2"}
        assert {"FEAT_LSE", "FEAT_RDM", "FEAT_DotProd", "FEAT_FP16", "FEAT_RAS"} <= by_cpu["neoverse-n1"] - by_cpu["cortex-a72"]


def _by(cpu: str, kernel_major: str) -> checks.Host:
    return next(h for h in HOSTS if h.cpu == cpu and h.kernel.startswith(kernel_major))


def test_a_common_model_of_cortex_a76_and_neoverse_n1_runs_on_both_under_linux_7() -> None:
    """Same features, different MIDR: Linux 7.3 lets userspace set MIDR (cap 239), so both run one model."""
    pair = [_by("cortex-a76", "7.").kvm, _by("neoverse-n1", "7.").kvm]
    result = combine(pair)
    assert result.feasible, [b.message() for b in result.blockers]
    assert all(can_run(p, result.model).ok for p in pair)


def test_under_linux_6_12_the_same_pair_fails_on_the_identity_registers_only() -> None:
    pair = [_by("cortex-a76", "6.12").kvm, _by("neoverse-n1", "6.12").kvm]
    result = combine(pair)
    assert result.feasible
    refused = can_run(pair[1], result.model)
    assert not refused.ok and {r.register for r in refused.refusals} == {"MIDR_EL1"}
    assert "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS" in refused.refusals[0].message()


def test_cortex_a72_and_neoverse_n1_cannot_share_a_model_kvm_cannot_lower_fp_and_advsimd() -> None:
    for kernel in ("6.12", "7."):
        result = combine([_by("cortex-a72", kernel).kvm, _by("neoverse-n1", kernel).kvm])
        assert not result.feasible
        blocked = {b.message().split(" differs")[0] for b in result.blockers}
        assert {"ID_AA64PFR0_EL1.FP", "ID_AA64PFR0_EL1.AdvSIMD"} <= blocked
