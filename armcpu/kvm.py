"""What Linux KVM lets userspace change, and the rules it checks a written ID value with.

Source: Linux ``arch/arm64/kvm/sys_regs.c`` (2026 tree: ``sys_reg_descs[]`` writable masks,
``set_id_reg``/``arm64_check_features``), summarised in ``docs/concepts.md``. The table below is
used only for profiles that do not carry the node's own masks (raw register dumps, planning with
the CLI): the agent's KVM probe reads the real masks with ``KVM_ARM_GET_REG_WRITABLE_MASKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from armcpu import catalog
from armcpu.catalog import Field, Rule

# KVM checks these fields with a rule of its own instead of the kernel's ftr rule.
RULE_OVERRIDES: Mapping[tuple[str, str], tuple[Rule, int]] = {
    ("ID_AA64DFR0_EL1", "PMUVer"): (Rule.LOWER, 0),
    ("ID_AA64DFR0_EL1", "DebugVer"): (Rule.LOWER, 0),
    ("ID_DFR0_EL1", "PerfMon"): (Rule.LOWER, 0),
    ("ID_AA64PFR0_EL1", "GIC"): (Rule.EXACT, 0),
}

# Fields KVM accepts any written value for but ignores (the guest reads the node's value): the old NV
# value userspace may still write (sys_regs.c; the truth matrix: a 6.12 view written on 7.3).
IGNORED_WRITES: frozenset[tuple[str, str]] = frozenset({("ID_AA64MMFR2_EL1", "NV")})

# Registers whose writable fields KVM takes at any value, without the feature-register safe-value check:
# CLIDR_EL1 (set_clidr checks RES0 bits and the IDC rule only; armcpu.model.clidr_implies_idc).
UNCHECKED_WRITABLE: frozenset[str] = frozenset({"CLIDR_EL1"})

# Fields whose guest value is set by a vCPU feature flag rather than by writing the register:
# with the feature off KVM's limit is 0 there, so a model that has them all at 0 runs on any node.
VCPU_FEATURE_FIELDS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "pauth": (
        ("ID_AA64ISAR1_EL1", "APA"),
        ("ID_AA64ISAR1_EL1", "API"),
        ("ID_AA64ISAR1_EL1", "GPA"),
        ("ID_AA64ISAR1_EL1", "GPI"),
        ("ID_AA64ISAR2_EL1", "APA3"),
        ("ID_AA64ISAR2_EL1", "GPA3"),
    ),
    "sve": (
        ("ID_AA64PFR0_EL1", "SVE"),
        *(("ID_AA64ZFR0_EL1", f.name) for f in catalog.register("ID_AA64ZFR0_EL1").fields),
    ),
    # KVM_ARM_VCPU_PMU_V3 (QEMU ``pmu=off``): without it KVM reports PMUVer as not implemented and
    # derives the AArch32 PerfMon from it (sys_regs.c ``vcpu_pmuver``, ``pmuver_to_perfmon``).
    "pmu": (
        ("ID_AA64DFR0_EL1", "PMUVer"),
        ("ID_DFR0_EL1", "PerfMon"),
    ),
}

# The fields that say whether a vCPU feature is on at all: with every one of them 0 the feature is off,
# and KVM then reports 0 in every field of its group (pointer auth's generic half cannot stay on
# without the address half: KVM takes the PTRAUTH_ADDRESS and PTRAUTH_GENERIC vCPU flags together).
GROUP_LEADS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "pauth": (("ID_AA64ISAR1_EL1", "APA"), ("ID_AA64ISAR1_EL1", "API"), ("ID_AA64ISAR2_EL1", "APA3")),
    "sve": (("ID_AA64PFR0_EL1", "SVE"),),
    "pmu": (("ID_AA64DFR0_EL1", "PMUVer"),),
}

# The groups libvirt (and so KubeVirt's ``domain.cpu.features``) can switch off on aarch64.
LIBVIRT_GROUPS: tuple[str, ...] = ("sve", "pauth")


def vcpu_group_is_off(value: Callable[[str], int], group: str) -> bool:
    """Whether every field of a vCPU-feature group (``pauth``, ``sve``, ``pmu``) is 0 in a register set,
    given as its ``value(register)`` lookup (a Model's or a Profile's)."""
    return all(catalog.field(r, f).extract(value(r)) == 0 for r, f in VCPU_FEATURE_FIELDS[group])


def effective_rule(fld: Field) -> tuple[Rule, int]:
    """The rule KVM applies to a written value of ``fld`` (kernel rule unless KVM overrides)."""
    return RULE_OVERRIDES.get((fld.register, fld.name), (fld.rule, fld.safe))


def safe_value(fld: Field, new: int, cur: int) -> int:
    """Linux ``arm64_ftr_safe_value`` under KVM's rule for ``fld``; raw field bits in and out."""
    if new == cur:
        return cur
    rule, safe = effective_rule(fld)
    a, b = fld.ordinal(new), fld.ordinal(cur)
    if rule is Rule.EXACT:
        return safe
    if rule is Rule.HIGHER_OR_ZERO and (a == 0 or b == 0):
        return 0
    if rule in (Rule.HIGHER, Rule.HIGHER_OR_ZERO):
        return new if a > b else cur
    return new if a < b else cur  # LOWER, and NONE (sanitised away; the lower value is never more)


_ALL = "*"
# register -> fields KVM lets userspace write ("*": every catalogued field), Linux 6.18-era.
_WRITABLE_FIELDS: Mapping[str, tuple[str, ...]] = {
    **{
        name: (_ALL,)
        for name in (
            "ID_PFR0_EL1", "ID_PFR1_EL1", "ID_PFR2_EL1", "ID_DFR0_EL1", "ID_MMFR0_EL1",
            "ID_MMFR1_EL1", "ID_MMFR2_EL1", "ID_MMFR3_EL1", "ID_MMFR4_EL1", "ID_MMFR5_EL1",
            "ID_ISAR0_EL1", "ID_ISAR1_EL1", "ID_ISAR2_EL1", "ID_ISAR3_EL1", "ID_ISAR4_EL1",
            "ID_ISAR5_EL1", "ID_ISAR6_EL1", "MVFR0_EL1", "MVFR1_EL1", "MVFR2_EL1",
            "ID_AA64ZFR0_EL1", "ID_AA64FPFR0_EL1", "ID_AA64ISAR0_EL1", "CLIDR_EL1",
        )
    },
    "ID_AA64PFR0_EL1": ("CSV3", "CSV2", "RME", "DIT", "SEL2", "RAS", "GIC", "EL3", "EL2", "EL1", "EL0"),
    "ID_AA64PFR1_EL1": ("DF2", "CSV2_frac", "RAS_frac", "SSBS", "BT"),
    "ID_AA64PFR2_EL1": ("FPMR", "MTEFAR", "MTESTOREONLY", "GCIE"),
    "ID_AA64ISAR1_EL1": (
        "LS64", "XS", "I8MM", "DGH", "BF16", "SPECRES", "SB", "FRINTTS", "LRCPC", "FCMA", "JSCVT", "DPB",
    ),
    "ID_AA64ISAR2_EL1": (
        "ATS1A", "LUT", "CSSC", "RPRFM", "PCDPHINT", "PRFMSLC", "SYSINSTR_128", "SYSREG_128",
        "CLRBHB", "PAC_frac", "BC", "MOPS", "RPRES", "WFxT",
    ),
    "ID_AA64ISAR3_EL1": ("FPRCVT", "LSFE", "LSUI", "FAMINMAX"),
    "ID_AA64DFR0_EL1": ("DoubleLock", "WRPs", "PMUVer", "DebugVer"),
    "ID_AA64MMFR0_EL1": tuple(
        f.name for f in catalog.register("ID_AA64MMFR0_EL1").fields if f.name != "ASIDBITS"
    ),
    "ID_AA64MMFR1_EL1": tuple(
        f.name for f in catalog.register("ID_AA64MMFR1_EL1").fields
        if f.name not in ("XNX", "VH", "VMIDBits")
    ),
    "ID_AA64MMFR2_EL1": tuple(
        f.name for f in catalog.register("ID_AA64MMFR2_EL1").fields
        if f.name not in ("EVT", "FWB", "IDS", "NV", "CCIDX")
    ),
    "ID_AA64MMFR3_EL1": ("TCRX", "SCTLRX", "S1PIE", "S1POE"),
    "ID_AA64MMFR4_EL1": ("NV_frac",),
    "CTR_EL0": ("DIC", "IDC", "DminLine", "L1Ip", "IminLine"),
    "MIDR_EL1": ("Implementer", "Variant", "Architecture", "PartNum", "Revision"),
    "REVIDR_EL1": ("IMPDEF",),
    "AIDR_EL1": ("IMPDEF",),
}


def assumed_writable_masks(aarch32_el0: bool = True) -> dict[str, int]:
    """Writable masks a 6.18-era KVM reports, for profiles that do not carry their own.

    AArch32 ID registers are writable only on hosts with 32-bit EL0 (RAZ/WI otherwise).
    """
    masks: dict[str, int] = {}
    for name, reg in catalog.registers().items():
        wanted = _WRITABLE_FIELDS.get(name, ())
        mask = 0
        for fld in reg.fields:
            if _ALL in wanted or fld.name in wanted:
                mask |= fld.mask
        is_aarch32 = not name.startswith("ID_AA64") and (name.startswith("ID_") or name.startswith("MVFR"))
        if is_aarch32 and not aarch32_el0:
            mask = 0
        masks[name] = mask
    return masks


def is_field_writable(masks: Mapping[str, int] | None, fld: Field) -> bool | None:
    """True/False from a node's masks; None when the node reported none."""
    if masks is None:
        return None
    return masks.get(fld.register, 0) & fld.mask == fld.mask
