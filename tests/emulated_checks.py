"""What must hold for a profile a real Linux KVM produced on an emulated arm64 host (QEMU TCG, EL2).

Used twice: by the live tier (tests/emulated, boots the hosts) and by the unit tests on the recordings
it left in tests/fixtures/kvm/emulated (so every run checks them without booting anything).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armcpu import catalog, features, kvm
from armcpu.profile import Profile, from_dict
from tests.helpers import REFERENCE, REPO

RECORDINGS = REPO / "tests" / "fixtures" / "kvm" / "emulated"
AARCH32_PREFIXES = ("ID_PFR", "ID_DFR", "ID_MMFR", "ID_ISAR", "MVFR", "ID_AFR")
# Fields armcpu's 6.18 table calls writable that Linux 7.3 (Debian trixie-backports) does not let userspace write.
NOT_WRITABLE_AFTER_6_18 = {("ID_AA64ISAR0_EL1", "TME")}

# FEATs each QEMU CPU model implies (QEMU 10.0, target/arm/tcg/cpu64.c ID register values):
# what a guest of that host must see, and what it must not. MTE is absent on neoverse-n2 although
# QEMU's model has it: KVM hides MTE unless the VMM enables KVM_CAP_ARM_MTE, which no probe does.
HAS = {
    "cortex-a72": {"FEAT_FP", "FEAT_AdvSIMD", "FEAT_AES", "FEAT_PMULL", "FEAT_SHA1", "FEAT_SHA256", "FEAT_CRC32"},
    "neoverse-n1": {"FEAT_FP", "FEAT_AdvSIMD", "FEAT_AES", "FEAT_PMULL", "FEAT_SHA1", "FEAT_SHA256", "FEAT_CRC32", "FEAT_LSE",
                    "FEAT_RDM", "FEAT_FP16", "FEAT_DotProd", "FEAT_LRCPC", "FEAT_DPB", "FEAT_RAS", "FEAT_VHE", "FEAT_PAN2"},
    "cortex-a76": {"FEAT_LSE", "FEAT_RDM", "FEAT_FP16", "FEAT_DotProd", "FEAT_LRCPC", "FEAT_DPB", "FEAT_RAS", "FEAT_VHE", "FEAT_PAN2"},
    "max": {"FEAT_LSE", "FEAT_SVE", "FEAT_SVE2", "FEAT_PAuth", "FEAT_BF16", "FEAT_I8MM", "FEAT_SHA3", "FEAT_SM4", "FEAT_BTI",
            "FEAT_RNG", "FEAT_FlagM", "FEAT_LRCPC2", "FEAT_DotProd"},
    "neoverse-v1": {"FEAT_SVE", "FEAT_PAuth", "FEAT_BF16", "FEAT_I8MM", "FEAT_SHA3", "FEAT_SM4", "FEAT_RNG", "FEAT_LSE", "FEAT_LRCPC2",
                    "FEAT_DotProd", "FEAT_FHM"},
    "neoverse-n2": {"FEAT_SVE", "FEAT_SVE2", "FEAT_SVE_BitPerm", "FEAT_PAuth", "FEAT_BTI", "FEAT_BF16", "FEAT_I8MM", "FEAT_SB",
                    "FEAT_SPECRES", "FEAT_FlagM2", "FEAT_FRINTTS", "FEAT_LSE"},
}
LACKS = {
    "cortex-a72": {"FEAT_LSE", "FEAT_RDM", "FEAT_FP16", "FEAT_DotProd", "FEAT_LRCPC", "FEAT_RAS", "FEAT_SVE", "FEAT_PAuth"},
    "neoverse-n1": {"FEAT_SVE", "FEAT_PAuth", "FEAT_BF16", "FEAT_I8MM", "FEAT_SHA3", "FEAT_BTI"},
    "cortex-a76": {"FEAT_SVE", "FEAT_PAuth", "FEAT_BF16", "FEAT_I8MM", "FEAT_SHA3", "FEAT_BTI"},
    "max": set(),
    "neoverse-v1": {"FEAT_SVE2", "FEAT_BTI", "FEAT_MTE", "FEAT_SME", "FEAT_SB"},
    "neoverse-n2": {"FEAT_MTE", "FEAT_MTE2", "FEAT_SME"},
}
# vCPU features the probe asks for when KVM offers them: SVE and pointer auth on `max`, neoverse-v1 and neoverse-n2.
_ALL_VCPU = {"psci-0.2", "pmu-v3", "sve", "ptrauth-address", "ptrauth-generic"}
VCPU_FEATURES = {"cortex-a72": {"psci-0.2", "pmu-v3"}, "neoverse-n1": {"psci-0.2", "pmu-v3"}, "cortex-a76": {"psci-0.2", "pmu-v3"},
                 "max": _ALL_VCPU, "neoverse-v1": _ALL_VCPU, "neoverse-n2": _ALL_VCPU}


@dataclass(frozen=True)
class Host:
    """One emulated host: QEMU CPU model, kernel, and what the agent saw through KVM and through MRS."""

    cpu: str
    kernel: str
    kvm: Profile
    mrs: Profile
    conversation: dict[str, Any]

    @property
    def kernel_version(self) -> tuple[int, int]:
        major, minor = self.kernel.split(".")[:2]
        return int(major), int(minor)


def load_recordings() -> list[Host]:
    hosts = []
    for directory in sorted(d for d in RECORDINGS.iterdir() if d.is_dir()):
        conversation = json.loads((directory / "kvm-conversation.json").read_text())
        meta = conversation["emulated"]
        profiles = {k: from_dict(json.loads((directory / f"profile-{k}.json").read_text()), directory.name) for k in ("kvm", "mrs")}
        hosts.append(Host(meta["qemu_cpu"], meta["kernel"], profiles["kvm"], profiles["mrs"], conversation))
    return hosts


def user_visible_fields() -> set[tuple[str, str]]:
    """Fields the kernel shows to EL0 through MRS emulation (FTR_VISIBLE), from the reference table."""
    with (REFERENCE / "fields_detail.csv").open() as fh:
        return {(row["register"], row["field"]) for row in csv.DictReader(fh) if "visible=yes" in row["kernel_ftr"]}


def check_probe(host: Host) -> None:
    assert host.kvm.probe == "kvm" and host.mrs.probe == "mrs"
    assert set(host.kvm.kvm.vcpu_features) == VCPU_FEATURES[host.cpu]
    assert host.kvm.kernel == host.kernel


def check_features(host: Host) -> None:
    present = set(features.decode(host.kvm.registers))
    assert HAS[host.cpu] <= present, sorted(HAS[host.cpu] - present)
    assert not LACKS[host.cpu] & present, sorted(LACKS[host.cpu] & present)


def field_granular(register: str, mask: int) -> list[str]:
    """Fields of ``register`` the mask covers only in part (KVM's masks are whole fields)."""
    reg = catalog.register(register)
    return [f.name for f in reg.fields if 0 < (mask >> f.lsb) & ((1 << f.width) - 1) < (1 << f.width) - 1]


def check_writable_masks(host: Host) -> None:
    """Present (the kernel has KVM_ARM_GET_REG_WRITABLE_MASKS), field-granular, and sized for the kernel."""
    masks = host.kvm.writable
    assert masks is not None and host.kvm.kvm.reg_mask_ranges
    assert sum(1 for m in masks.values() if m) >= 20
    for register, mask in masks.items():
        assert field_granular(register, mask) == [], (register, hex(mask))
    identity = [r for r in ("MIDR_EL1", "REVIDR_EL1", "AIDR_EL1") if masks.get(r)]
    assert bool(identity) == bool(host.kvm.kvm.writable_imp_id_regs), (identity, host.kvm.kvm.writable_imp_id_regs)
    # armcpu's writable table (armcpu/kvm.py, written for Linux 6.18 from the facts digest) against the real kernels:
    # an older kernel lets userspace write a subset of it; a newer one all of it but the fields named here.
    table = kvm.assumed_writable_masks(True)
    if host.kernel_version < (6, 18):
        for register, mask in masks.items():
            if not register.startswith(AARCH32_PREFIXES):  # AArch32 registers: 6.12 also reports RES0 bits
                assert mask & ~table.get(register, 0) == 0, f"{register}: {mask & ~table.get(register, 0):#x} writable but not in the table"
    else:
        lost = {(r, f.name) for r, m in table.items() for f in catalog.register(r).fields
                if (m >> f.lsb) & ((1 << f.width) - 1) and not (masks.get(r, 0) >> f.lsb) & ((1 << f.width) - 1)}
        assert lost == NOT_WRITABLE_AFTER_6_18, sorted(lost ^ NOT_WRITABLE_AFTER_6_18)


def check_mrs_agrees(host: Host, exceptions: set[tuple[str, str]]) -> None:
    """Every field the kernel shows EL0 reads the same through MRS emulation and through KVM, except
    ``exceptions`` (named and explained by the caller)."""
    visible = user_visible_fields()
    differ = set()
    compared = 0
    for register in sorted(set(host.kvm.registers) & set(host.mrs.registers)):
        reg = catalog.registers().get(register)
        if reg is None:
            continue
        for fld in reg.fields:
            if (register, fld.name) in visible:
                compared += 1
                if fld.extract(host.kvm.value(register)) != fld.extract(host.mrs.value(register)):
                    differ.add((register, fld.name))
    assert compared >= 60
    assert differ == exceptions, sorted(differ ^ exceptions)


def check_conversation_shape(host: Host) -> None:
    """The conversations the unit tests build (armcpu_testing.fixtures.conversation) are this real one, call for call."""
    from armcpu_testing import fixtures as fx

    real = host.conversation["calls"]
    ipa_bits = next(c["ret"] for c in real if c["request"] == "0x0000ae03" and c["arg"] == 165)
    vcpu = set(host.kvm.kvm.vcpu_features)
    built = fx.conversation(dict(host.kvm.registers), dict(host.kvm.writable or {}), sve="sve" in vcpu, ptrauth="ptrauth-address" in vcpu,
                            imp_id=bool(host.kvm.kvm.writable_imp_id_regs), ipa_bits=ipa_bits,
                            vendor_hyp_bmap_2=host.kvm.kvm.vendor_hyp_bmap_2)
    shape = [{k: v for k, v in call.items() if k != "name"} for call in built["calls"]]
    assert shape == real
    assert built["one_reg"] == host.conversation["one_reg"]
    assert built["writable_masks"] == host.conversation["writable_masks"]


def recorded_path(host: Host) -> Path:
    return RECORDINGS / host.kvm.name
