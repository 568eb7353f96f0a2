"""MIDR_EL1 decoding: implementer, part, variant and revision in words.

Implementer and part numbers: Linux ``arch/arm64/include/asm/cputype.h``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IMPLEMENTERS: dict[int, tuple[str, str]] = {
    0x41: ("Arm", "arm"),
    0x42: ("Broadcom", "broadcom"),
    0x43: ("Cavium", "cavium"),
    0x46: ("Fujitsu", "fujitsu"),
    0x48: ("HiSilicon", "hisilicon"),
    0x4E: ("NVIDIA", "nvidia"),
    0x50: ("Applied Micro", "apm"),
    0x51: ("Qualcomm", "qualcomm"),
    0x61: ("Apple", "apple"),
    0x6D: ("Microsoft", "microsoft"),
    0xC0: ("Ampere", "ampere"),
}

PARTS: dict[tuple[int, int], str] = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD0E): "Cortex-A76AE",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD84): "Neoverse-V3",
    (0x41, 0xD8E): "Neoverse-N3",
    (0x43, 0x0AF): "ThunderX2",
    (0x46, 0x001): "A64FX",
    (0x48, 0xD01): "TSV110",
    (0x4E, 0x003): "Denver",
    (0x4E, 0x004): "Carmel",
    (0x6D, 0xD49): "Cobalt-100",
    (0xC0, 0xAC3): "AmpereOne",
    (0xC0, 0xAC4): "AmpereOne-A",
}


@dataclass(frozen=True)
class Midr:
    implementer: int
    variant: int
    architecture: int
    part: int
    revision: int

    @property
    def implementer_name(self) -> str:
        return IMPLEMENTERS.get(self.implementer, (f"implementer {self.implementer:#04x}", ""))[0]

    @property
    def part_name(self) -> str:
        return PARTS.get((self.implementer, self.part), f"part {self.part:#05x}")

    @property
    def revision_text(self) -> str:
        return f"r{self.variant}p{self.revision}"

    def describe(self) -> str:
        return f"{self.implementer_name} {self.part_name} {self.revision_text}"

    def label_value(self) -> str:
        """A label-safe name like ``arm-neoverse-v2`` (falls back to hex numbers)."""
        impl = IMPLEMENTERS.get(self.implementer, ("", f"{self.implementer:02x}"))[1]
        part = PARTS.get((self.implementer, self.part), f"{self.part:03x}")
        return re.sub(r"[^a-z0-9.-]", "-", f"{impl}-{part}".lower()).strip("-")


def decode(midr: int) -> Midr:
    return Midr(
        implementer=(midr >> 24) & 0xFF,
        variant=(midr >> 20) & 0xF,
        architecture=(midr >> 16) & 0xF,
        part=(midr >> 4) & 0xFFF,
        revision=midr & 0xF,
    )
