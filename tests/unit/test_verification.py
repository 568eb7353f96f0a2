"""Verdicts from a kernel's answers: what counts as accepted, read back, and which fields disagree."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from armcpu import catalog
from armcpu.verification import verdict
from tests.helpers import load_cpu

G4 = load_cpu("kvm-guest/graviton4-neoverse-v2-host6.18.json")
NAMES = sorted(G4.registers)


def test_all_accepted_and_read_back_is_ok() -> None:
    model = dict(G4.registers)
    v = verdict(model, G4.registers, dict.fromkeys(model, "accepted"), model, predicted=True)
    assert v.accepted and v.guest_read_matches is True and v.ok and v.agrees_with_prediction is True
    assert v.disagreements() == []


def test_a_refused_register_names_exactly_the_fields_the_model_changed() -> None:
    model = dict(G4.registers)
    aes = catalog.field("ID_AA64ISAR0_EL1", "AES")
    sha2 = catalog.field("ID_AA64ISAR0_EL1", "SHA2")
    model["ID_AA64ISAR0_EL1"] = sha2.insert(aes.insert(model["ID_AA64ISAR0_EL1"], 0), 0)
    answers = dict.fromkeys(model, "accepted") | {"ID_AA64ISAR0_EL1": "EINVAL"}
    reads = dict(G4.registers)  # the guest saw the node's own value there
    v = verdict(model, G4.registers, answers, reads, predicted=True)
    assert not v.accepted and v.guest_read_matches is None and not v.ok and v.agrees_with_prediction is False
    assert {d.field for d in v.disagreements()} == {aes.qualified, sha2.qualified}
    assert all(d.kernel == "EINVAL" and d.node != d.model for d in v.disagreements())


def test_a_register_the_kernel_lacks_is_fine_only_at_zero() -> None:
    model = {"ID_AA64ISAR3_EL1": 0, "ID_AA64PFR2_EL1": 0x1}
    answers = {"ID_AA64ISAR3_EL1": "ENOENT", "ID_AA64PFR2_EL1": "ENOENT"}
    v = verdict(model, {}, answers, {"ID_AA64ISAR3_EL1": 0, "ID_AA64PFR2_EL1": 0})
    assert [a.name for a in v.answers if a.refused] == ["ID_AA64PFR2_EL1"]
    assert not v.accepted


def test_a_guest_that_reads_something_else_is_named_by_field() -> None:
    model = dict(G4.registers)
    ctr = catalog.field("CTR_EL0", "DIC")
    reads = dict(model) | {"CTR_EL0": ctr.insert(model["CTR_EL0"], 1 - ctr.extract(model["CTR_EL0"]))}
    v = verdict(model, G4.registers, dict.fromkeys(model, "accepted"), reads)
    assert v.accepted and v.guest_read_matches is False and not v.ok
    assert [d.field for d in v.disagreements()] == ["CTR_EL0.DIC"]


def test_a_guest_that_never_ran_has_no_read_back() -> None:
    model = dict(G4.registers)
    v = verdict(model, G4.registers, dict.fromkeys(model, "accepted"), None, run_error="KVM_RUN failed: EINVAL")
    assert v.accepted and v.guest_read_matches is None and not v.ok and not v.ran


@given(st.sets(st.sampled_from(NAMES)), st.sets(st.sampled_from(NAMES)))
def test_ok_exactly_when_nothing_is_refused_and_everything_reads_back(refused: set[str], misread: set[str]) -> None:
    model = dict(G4.registers)
    answers = {n: "EINVAL" if n in refused else "accepted" for n in model}
    reads = {n: v ^ 1 if n in misread else v for n, v in model.items()}
    v = verdict(model, G4.registers, answers, reads)
    assert v.accepted == (not refused)
    assert v.ok == (not refused and not misread)
    flagged = {d.field.split(".")[0] for d in v.disagreements()}
    assert flagged == refused | misread
