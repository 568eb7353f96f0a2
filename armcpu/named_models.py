"""Named CPU models: a family's register values, used as a cap (``base``) or a reference.

Each model states where every value comes from. A model may cover only some fields (AmpereOne,
reconstructed from /proc/cpuinfo): a base caps only the fields it covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from armcpu import catalog, hwcaps
from armcpu.catalog import RegisterKind
from armcpu.model import Model


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    registers: Mapping[str, int]
    covered: Mapping[str, int]  # register -> mask of the bits this model states
    source: str

    @property
    def midr(self) -> int:
        return self.registers.get("MIDR_EL1", 0)

    def as_model(self) -> Model:
        return Model(registers=dict(self.registers), members=(self.name,))


def _full(registers: Mapping[str, int]) -> dict[str, int]:
    return {
        name: catalog.register(name).defined_mask
        for name in registers
        if catalog.register(name).kind is not RegisterKind.IDENTITY
    }


def _hex(values: Mapping[str, str]) -> dict[str, int]:
    return {k: int(v, 16) for k, v in values.items()}


# Neoverse-N1 (Ampere Altra / Altra Max, AWS Graviton2): what a KVM guest vCPU sees on a Graviton2
# host under Linux 6.18 (Firecracker tests/data/cpu_template_helper, fingerprint_ARM_NEOVERSE_N1_6.18host.json).
_N1 = _hex({
    "CTR_EL0": "0xb444c004", "ID_AA64DFR0_EL1": "0x10305008", "ID_AA64ISAR0_EL1": "0x0000100010211120",
    "ID_AA64ISAR1_EL1": "0x100001", "ID_AA64MMFR0_EL1": "0x101125", "ID_AA64MMFR1_EL1": "0x10212122",
    "ID_AA64MMFR2_EL1": "0x0100000000000011", "ID_AA64PFR0_EL1": "0x1100000011111112",
    "ID_AA64PFR1_EL1": "0x20", "ID_DFR0_EL1": "0x10088", "ID_ISAR0_EL1": "0x2101110",
    "ID_ISAR1_EL1": "0x13112111", "ID_ISAR2_EL1": "0x21232042", "ID_ISAR3_EL1": "0x1112131",
    "ID_ISAR4_EL1": "0x10142", "ID_ISAR5_EL1": "0x1011121", "ID_ISAR6_EL1": "0x10",
    "ID_MMFR0_EL1": "0x10201105", "ID_MMFR1_EL1": "0x40000000", "ID_MMFR2_EL1": "0x1260000",
    "ID_MMFR3_EL1": "0x2122211", "ID_MMFR4_EL1": "0x21110", "ID_PFR0_EL1": "0x10131",
    "ID_PFR1_EL1": "0x10010000", "ID_PFR2_EL1": "0x11", "MVFR0_EL1": "0x10110222",
    "MVFR1_EL1": "0x13211111", "MVFR2_EL1": "0x43", "MIDR_EL1": "0x413fd0c1",
})
# Neoverse-V1 (AWS Graviton3): MRS at EL1 on a c7g instance (lelegard/arm-cpusysregs, collect/
# graviton3-host-amazonlinux), which keeps SVE and pointer authentication visible.
_V1 = _hex({
    "CTR_EL0": "0xb444c004", "ID_AA64DFR0_EL1": "0x000001f210305519", "ID_AA64ISAR0_EL1": "0x1011111110212120",
    "ID_AA64ISAR1_EL1": "0x0011100001211032", "ID_AA64MMFR0_EL1": "0x101125", "ID_AA64MMFR1_EL1": "0x10212122",
    "ID_AA64MMFR2_EL1": "0x0220011102101011", "ID_AA64PFR0_EL1": "0x1101110123111112",
    "ID_AA64PFR1_EL1": "0x20", "ID_AA64ZFR0_EL1": "0x0000100000100000", "ID_ISAR0_EL1": "0x2101110",
    "ID_ISAR1_EL1": "0x13112111", "ID_ISAR2_EL1": "0x21232042", "ID_ISAR3_EL1": "0x1112131",
    "ID_ISAR4_EL1": "0x10142", "ID_ISAR5_EL1": "0x11011121", "ID_ISAR6_EL1": "0x1100111",
    "ID_MMFR0_EL1": "0x10201105", "ID_MMFR1_EL1": "0x40000000", "ID_MMFR2_EL1": "0x1260000",
    "ID_MMFR3_EL1": "0x2122211", "ID_MMFR4_EL1": "0x1021110", "ID_PFR0_EL1": "0x21110131",
    "ID_PFR1_EL1": "0x30010000", "ID_PFR2_EL1": "0x11", "MIDR_EL1": "0x411fd401",
})
# Neoverse-N2: reset values from the Arm TRM as QEMU's TCG model has them (target/arm/tcg/cpu64.c,
# aarch64_neoverse_n2_initfn, r0p3). QEMU leaves the GIC nibbles at 0 (filled in when a GIC exists).
_N2 = _hex({
    "CTR_EL0": "0x00000004b444c004", "ID_AA64DFR0_EL1": "0x000011f210305619",
    "ID_AA64ISAR0_EL1": "0x1221111110212120", "ID_AA64ISAR1_EL1": "0x0011111101211052",
    "ID_AA64MMFR0_EL1": "0x0000022200101125", "ID_AA64MMFR1_EL1": "0x10212122",
    "ID_AA64MMFR2_EL1": "0x1221011112101011", "ID_AA64PFR0_EL1": "0x1201111120111112",
    "ID_AA64PFR1_EL1": "0x221", "ID_AA64ZFR0_EL1": "0x0000110100110021", "ID_DFR0_EL1": "0x16011099",
    "ID_ISAR0_EL1": "0x2101110", "ID_ISAR1_EL1": "0x13112111", "ID_ISAR2_EL1": "0x21232042",
    "ID_ISAR3_EL1": "0x1112131", "ID_ISAR4_EL1": "0x10142", "ID_ISAR5_EL1": "0x11011121",
    "ID_ISAR6_EL1": "0x1111111", "ID_MMFR0_EL1": "0x10201105", "ID_MMFR1_EL1": "0x40000000",
    "ID_MMFR2_EL1": "0x1260000", "ID_MMFR3_EL1": "0x2122211", "ID_MMFR4_EL1": "0x1021110",
    "ID_PFR0_EL1": "0x21110131", "ID_PFR1_EL1": "0x10000", "ID_PFR2_EL1": "0x11",
    "MVFR0_EL1": "0x10110222", "MVFR1_EL1": "0x13211111", "MVFR2_EL1": "0x43", "MIDR_EL1": "0x410fd493",
})
# Neoverse-V2 (NVIDIA Grace, AWS Graviton4): the nine AArch64 registers of the Arm TRM (102375) as
# hrw/arm-socs-table transcribes them, CTR_EL0 as a Graviton4 KVM guest reads it, MIDR r0p0 (Grace).
_V2 = _hex({
    "ID_AA64DFR0_EL1": "0x000011f210305619", "ID_AA64ISAR0_EL1": "0x1221111110212120",
    "ID_AA64ISAR1_EL1": "0x0011111101211052", "ID_AA64MMFR0_EL1": "0x0000022200101125",
    "ID_AA64MMFR1_EL1": "0x1000000010312122", "ID_AA64MMFR2_EL1": "0x1221011112101011",
    "ID_AA64PFR0_EL1": "0x1201111123111111", "ID_AA64PFR1_EL1": "0x321",
    "ID_AA64ZFR0_EL1": "0x0000110100110021", "CTR_EL0": "0xb444c004", "MIDR_EL1": "0x410fd4f0",
})

# AmpereOne: no register dump is public; the /proc/cpuinfo Features line of a real machine
# (hrw/arm-socs-table cpuinfo-data/ampere-ampereone) fixes the fields the hwcaps read.
_AMPEREONE_HWCAPS = (
    "fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimdrdm jscvt fcma lrcpc dcpop sha3 "
    "asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp flagm2 frint i8mm bf16 "
    "rng bti ecv"
).split()


def registers_from_hwcaps(present: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Register values and covered masks implied by a hwcap list: each field a hwcap reads is set
    to the highest minimum among present hwcaps, or just below the lowest absent one."""
    by_field: dict[catalog.Field, list[tuple[int, bool]]] = {}
    for name, alts in hwcaps.HWCAPS.items():
        if len(alts) != 1:
            continue  # paca/pacg: one of several fields, so no single field is fixed
        reg, fname, minimum = alts[0]
        by_field.setdefault(catalog.field(reg, fname), []).append((minimum, name in present))
    regs: dict[str, int] = {}
    covered: dict[str, int] = {}
    for fld, entries in by_field.items():
        have = [fld.ordinal(m) for m, ok in entries if ok]
        if have:
            ordinal = max(have)
        else:
            ordinal = min(fld.ordinal(m) for m, _ in entries) - 1
        value = ordinal & fld.max_value
        regs[fld.register] = fld.insert(regs.get(fld.register, 0), value)
        covered[fld.register] = covered.get(fld.register, 0) | fld.mask
    # An arm64 Linux reported these hwcaps, so EL0 and EL1 run AArch64 (whether they also run
    # AArch32 is not known: these two fields are set but not covered).
    for name in ("EL0", "EL1"):
        fld = catalog.field("ID_AA64PFR0_EL1", name)
        regs[fld.register] = fld.insert(regs.get(fld.register, 0), 1)
    return regs, covered


@cache
def named_models() -> Mapping[str, NamedModel]:
    amp_regs, amp_cov = registers_from_hwcaps(_AMPEREONE_HWCAPS)
    amp_regs["MIDR_EL1"] = 0xC00FAC31
    models = [
        NamedModel("neoverse-n1", "Arm Neoverse-N1: Ampere Altra / Altra Max, AWS Graviton2", _N1, _full(_N1),
                   "KVM guest view on a Graviton2 host, Linux 6.18 (Firecracker test data)"),
        NamedModel("neoverse-v1", "Arm Neoverse-V1: AWS Graviton3", _V1, _full(_V1),
                   "MRS at EL1 on Graviton3 (lelegard/arm-cpusysregs)"),
        NamedModel("neoverse-n2", "Arm Neoverse-N2", _N2, _full(_N2),
                   "Arm TRM reset values as modelled by QEMU TCG (r0p3)"),
        NamedModel("neoverse-v2", "Arm Neoverse-V2: NVIDIA Grace, AWS Graviton4", _V2, _full(_V2),
                   "Arm TRM 102375 (hrw/arm-socs-table) + Graviton4 CTR_EL0"),
        NamedModel("ampereone", "AmpereOne (Ampere custom core, part 0xac3)", amp_regs, amp_cov,
                   "reconstructed from a real AmpereOne /proc/cpuinfo Features line; covers only hwcap fields"),
    ]
    return {m.name: m for m in models}


def lookup(name: str) -> NamedModel:
    models = named_models()
    key = name.strip().lower()
    if key not in models:
        raise KeyError(f"unknown base model {name!r}; known: {', '.join(sorted(models))}")
    return models[key]
