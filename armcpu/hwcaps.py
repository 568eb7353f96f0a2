"""Linux AT_HWCAP names (the /proc/cpuinfo Features line) and the ID register field each reads.

Source: Linux ``arch/arm64/kernel/cpufeature.c`` (``arm64_elf_hwcaps``): a hwcap is reported when
the field, compared as the kernel does (signed where the field is signed), is at least the value.
``evtstrm`` and ``cpuid`` describe the kernel, not the CPU, and are not listed.
"""

from __future__ import annotations

from collections.abc import Mapping

from armcpu import catalog

# name -> alternatives; the hwcap holds when any alternative (REGISTER, FIELD, minimum) holds.
HWCAPS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "fp": (("ID_AA64PFR0_EL1", "FP", 0),),
    "asimd": (("ID_AA64PFR0_EL1", "AdvSIMD", 0),),
    "fphp": (("ID_AA64PFR0_EL1", "FP", 1),),
    "asimdhp": (("ID_AA64PFR0_EL1", "AdvSIMD", 1),),
    "aes": (("ID_AA64ISAR0_EL1", "AES", 1),),
    "pmull": (("ID_AA64ISAR0_EL1", "AES", 2),),
    "sha1": (("ID_AA64ISAR0_EL1", "SHA1", 1),),
    "sha2": (("ID_AA64ISAR0_EL1", "SHA2", 1),),
    "sha512": (("ID_AA64ISAR0_EL1", "SHA2", 2),),
    "crc32": (("ID_AA64ISAR0_EL1", "CRC32", 1),),
    "atomics": (("ID_AA64ISAR0_EL1", "ATOMIC", 2),),
    "asimdrdm": (("ID_AA64ISAR0_EL1", "RDM", 1),),
    "sha3": (("ID_AA64ISAR0_EL1", "SHA3", 1),),
    "sm3": (("ID_AA64ISAR0_EL1", "SM3", 1),),
    "sm4": (("ID_AA64ISAR0_EL1", "SM4", 1),),
    "asimddp": (("ID_AA64ISAR0_EL1", "DP", 1),),
    "asimdfhm": (("ID_AA64ISAR0_EL1", "FHM", 1),),
    "flagm": (("ID_AA64ISAR0_EL1", "TS", 1),),
    "flagm2": (("ID_AA64ISAR0_EL1", "TS", 2),),
    "rng": (("ID_AA64ISAR0_EL1", "RNDR", 1),),
    "jscvt": (("ID_AA64ISAR1_EL1", "JSCVT", 1),),
    "fcma": (("ID_AA64ISAR1_EL1", "FCMA", 1),),
    "lrcpc": (("ID_AA64ISAR1_EL1", "LRCPC", 1),),
    "ilrcpc": (("ID_AA64ISAR1_EL1", "LRCPC", 2),),
    "lrcpc3": (("ID_AA64ISAR1_EL1", "LRCPC", 3),),
    "dcpop": (("ID_AA64ISAR1_EL1", "DPB", 1),),
    "dcpodp": (("ID_AA64ISAR1_EL1", "DPB", 2),),
    "sb": (("ID_AA64ISAR1_EL1", "SB", 1),),
    "frint": (("ID_AA64ISAR1_EL1", "FRINTTS", 1),),
    "i8mm": (("ID_AA64ISAR1_EL1", "I8MM", 1),),
    "bf16": (("ID_AA64ISAR1_EL1", "BF16", 1),),
    "ebf16": (("ID_AA64ISAR1_EL1", "BF16", 2),),
    "dgh": (("ID_AA64ISAR1_EL1", "DGH", 1),),
    "paca": (("ID_AA64ISAR1_EL1", "APA", 1), ("ID_AA64ISAR1_EL1", "API", 1), ("ID_AA64ISAR2_EL1", "APA3", 1)),
    "pacg": (("ID_AA64ISAR1_EL1", "GPA", 1), ("ID_AA64ISAR1_EL1", "GPI", 1), ("ID_AA64ISAR2_EL1", "GPA3", 1)),
    "rpres": (("ID_AA64ISAR2_EL1", "RPRES", 1),),
    "wfxt": (("ID_AA64ISAR2_EL1", "WFxT", 2),),
    "cssc": (("ID_AA64ISAR2_EL1", "CSSC", 1),),
    "rprfm": (("ID_AA64ISAR2_EL1", "RPRFM", 1),),
    "mops": (("ID_AA64ISAR2_EL1", "MOPS", 1),),
    "hbc": (("ID_AA64ISAR2_EL1", "BC", 1),),
    "dit": (("ID_AA64PFR0_EL1", "DIT", 1),),
    "sve": (("ID_AA64PFR0_EL1", "SVE", 1),),
    "ssbs": (("ID_AA64PFR1_EL1", "SSBS", 2),),
    "bti": (("ID_AA64PFR1_EL1", "BT", 1),),
    "mte": (("ID_AA64PFR1_EL1", "MTE", 2),),
    "uscat": (("ID_AA64MMFR2_EL1", "AT", 1),),
    "ecv": (("ID_AA64MMFR0_EL1", "ECV", 1),),
    "afp": (("ID_AA64MMFR1_EL1", "AFP", 1),),
    "sve2": (("ID_AA64ZFR0_EL1", "SVEver", 1),),
    "sve2p1": (("ID_AA64ZFR0_EL1", "SVEver", 2),),
    "sveaes": (("ID_AA64ZFR0_EL1", "AES", 1),),
    "svepmull": (("ID_AA64ZFR0_EL1", "AES", 2),),
    "svebitperm": (("ID_AA64ZFR0_EL1", "BitPerm", 1),),
    "svesha3": (("ID_AA64ZFR0_EL1", "SHA3", 1),),
    "svesm4": (("ID_AA64ZFR0_EL1", "SM4", 1),),
    "svei8mm": (("ID_AA64ZFR0_EL1", "I8MM", 1),),
    "svef32mm": (("ID_AA64ZFR0_EL1", "F32MM", 1),),
    "svef64mm": (("ID_AA64ZFR0_EL1", "F64MM", 1),),
    "svebf16": (("ID_AA64ZFR0_EL1", "BF16", 1),),
    "sveebf16": (("ID_AA64ZFR0_EL1", "BF16", 2),),
}

# hwcaps that need SVE as well as their own ZFR0 field (the kernel checks SVE first).
_NEEDS_SVE = {name for name, alts in HWCAPS.items() if alts[0][0] == "ID_AA64ZFR0_EL1"}


def _holds(regs: Mapping[str, int], register: str, field_name: str, minimum: int) -> bool:
    fld = catalog.field(register, field_name)
    return fld.ordinal(fld.extract(regs.get(register, 0))) >= fld.ordinal(minimum)


def decode(regs: Mapping[str, int]) -> list[str]:
    """The hwcap names a Linux kernel would report for these register values, sorted."""
    sve = _holds(regs, "ID_AA64PFR0_EL1", "SVE", 1)
    return sorted(
        name
        for name, alts in HWCAPS.items()
        if any(_holds(regs, *alt) for alt in alts) and (sve or name not in _NEEDS_SVE)
    )


def unknown(names: list[str]) -> list[str]:
    """Names in a Features line that armcpu does not map (kernel-only or newer than this table)."""
    return [n for n in names if n not in HWCAPS and n not in ("evtstrm", "cpuid")]
