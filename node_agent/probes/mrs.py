"""The MRS-emulation probe: the kernel's sanitised system-wide ID registers, read from user space.

Linux traps EL0 ``mrs`` of the ID register space and emulates it when it advertises HWCAP_CPUID
(``cpuid`` in /proc/cpuinfo). The values are the host's sanitised view with every field the kernel
does not expose to user space at its safe value — a lower bound of what KVM would show a guest, so
a profile from this probe carries no writable masks and is marked ``probe: mrs``.

Only encodings the kernel emulates are read (``is_emulated()`` in arch/arm64/kernel/cpufeature.c:
op0=3, op1=0, CRn=0, CRm 0 or 2..7; in CRm 0 only MIDR and REVIDR), plus CTR_EL0 and DCZID_EL0,
which EL0 reads directly. Anything else would be an undefined instruction and kill the process
with SIGILL, so the selection is a safety property, tested without executing anything.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable, Iterable

from armcpu import catalog
from armcpu.catalog import Register

RET = 0xD65F03C0
Reader = Callable[[Register], int]


def mrs_instruction(reg: Register, rt: int = 0) -> int:
    """The A64 encoding of ``MRS X<rt>, <reg>``: 1101 0101 0011 o0 op1 CRn CRm op2 Rt, o0 = op0 - 2."""
    if reg.op0 not in (2, 3):
        raise ValueError(f"{reg.name}: MRS encodes only op0 2 or 3")
    return 0xD5300000 | ((reg.op0 - 2) << 19) | (reg.op1 << 16) | (reg.crn << 12) | (reg.crm << 8) | (reg.op2 << 5) | rt


def readable_at_el0(reg: Register) -> bool:
    """True for registers an EL0 ``mrs`` may read on Linux without being killed."""
    if reg.op0 != 3 or reg.crn != 0:
        return False
    if reg.op1 == 3:
        return reg.name in ("CTR_EL0", "DCZID_EL0")
    if reg.op1 != 0:
        return False
    if reg.crm == 0:
        return reg.name in ("MIDR_EL1", "REVIDR_EL1")
    return 2 <= reg.crm <= 7


def registers_to_read() -> list[Register]:
    return [reg for reg in catalog.registers().values() if readable_at_el0(reg)]


def read_all(reader: Reader, regs: Iterable[Register] | None = None) -> dict[str, int]:
    return {reg.name: reader(reg) for reg in (registers_to_read() if regs is None else regs)}


def _sync_icache(base: int, size: int) -> None:
    """Make freshly written instructions visible to instruction fetch (libgcc's __clear_cache)."""
    try:
        clear = getattr(ctypes.CDLL("libgcc_s.so.1"), "__clear_cache")
    except (OSError, AttributeError):
        return  # a fresh anonymous page has no stale I-cache lines for this mapping
    clear(ctypes.c_void_p(base), ctypes.c_void_p(base + size))


class NativeMrs:
    """Executes ``mrs x0, <reg>; ret`` from an executable page (arm64 only).

    One page holds one two-instruction function per register, written once; the page is made
    read+execute before any call, so it is never writable and executable at the same time.
    """

    def __init__(self, regs: Iterable[Register]) -> None:
        regs = list(regs)
        for reg in regs:
            if not readable_at_el0(reg):
                raise ValueError(f"{reg.name} is not readable from EL0; reading it would raise SIGILL")
        size = max(mmap.PAGESIZE, 8 * len(regs))
        self._page = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        for i, reg in enumerate(regs):
            self._page[8 * i : 8 * i + 8] = mrs_instruction(reg).to_bytes(4, "little") + RET.to_bytes(4, "little")
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mprotect(ctypes.c_void_p(base), ctypes.c_size_t(size), mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            raise OSError(ctypes.get_errno(), "mprotect(PROT_READ|PROT_EXEC) failed")
        _sync_icache(base, size)
        fn_type = ctypes.CFUNCTYPE(ctypes.c_uint64)
        self._functions = {reg.name: fn_type(base + 8 * i) for i, reg in enumerate(regs)}

    def __call__(self, reg: Register) -> int:
        return int(self._functions[reg.name]())
