"""sysfs and procfs facts: per-core MIDR/REVIDR/AIDR, HWCAPs, kernel release.

Linux publishes ``/sys/devices/system/cpu/cpuN/regs/identification/{midr_el1,revidr_el1}`` for
every online CPU (``aidr_el1`` only on kernels that add it), each as ``0x%016llx``. A node whose
cores differ (big.LITTLE) has several distinct MIDRs; each distinct triple becomes one Core.
"""

from __future__ import annotations

import re
from pathlib import Path

from armcpu.profile import Core
from node_agent.probes import ProbeError, ProbeUnavailable

CPU_DIR = Path("sys/devices/system/cpu")
_CPU_NAME = re.compile(r"^cpu(\d+)$")
_HEX = re.compile(r"^0x[0-9a-fA-F]{1,16}$")


def _read_hex(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ProbeError(f"{path}: cannot read: {exc.strerror}") from None
    if not _HEX.match(text):
        raise ProbeError(f"{path}: expected a hex value like 0x00000000410fd4f1, got {text[:40]!r}")
    return int(text, 16)


def read_cores(root: Path) -> tuple[Core, ...]:
    """Distinct core types, each with the CPUs that have it, in CPU order."""
    base = root / CPU_DIR
    if not base.is_dir():
        raise ProbeUnavailable(f"{base} does not exist")
    numbered = []
    for entry in base.iterdir():
        match = _CPU_NAME.match(entry.name)
        if match and (entry / "regs/identification/midr_el1").exists():
            numbered.append((int(match.group(1)), entry))
    if not numbered:
        raise ProbeUnavailable(f"no {base}/cpu*/regs/identification/midr_el1 (not arm64, or sysfs not mounted)")
    groups: dict[tuple[int, int, int], list[int]] = {}
    for number, entry in sorted(numbered):
        ident = entry / "regs/identification"
        midr = _read_hex(ident / "midr_el1")
        if midr >> 32:
            raise ProbeError(f"{ident / 'midr_el1'}: MIDR_EL1 is 32 bits wide, got {midr:#x}")
        revidr = _read_hex(ident / "revidr_el1") if (ident / "revidr_el1").exists() else 0
        aidr = _read_hex(ident / "aidr_el1") if (ident / "aidr_el1").exists() else 0
        groups.setdefault((midr, revidr, aidr), []).append(number)
    return tuple(Core(midr=m, revidr=r, aidr=a, cpus=tuple(cpus)) for (m, r, a), cpus in groups.items())


def read_hwcaps(root: Path) -> tuple[str, ...]:
    """The ``Features`` line of the first CPU in /proc/cpuinfo (empty when absent)."""
    path = root / "proc/cpuinfo"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Features":
            return tuple(value.split())
    return ()


def read_kernel(root: Path) -> str | None:
    path = root / "proc/sys/kernel/osrelease"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
