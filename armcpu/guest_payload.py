"""A tiny AArch64 guest that reads every catalogued ID register, generated from the catalog.

Why: "node N can run model M" is only true once a real vCPU started with M's registers and its
guest read M back. The agent's verifier (``node_agent/probes/kvm_verify.py``) loads this payload
into a scratch VM and runs it with ``KVM_RUN``; this module only builds the bytes and reads the
results back, so it stays pure and testable.

The guest runs at EL1 with the MMU off (a freshly initialised vCPU) and needs no stack, no
interrupts and no firmware. Layout inside its one memory slot (``RAM_BASE``, ``RAM_SIZE``):

=========== =========================================================================
offset      contents
=========== =========================================================================
0x0000      code: for each *pass*, ``MRS x0, <reg>`` + ``STR x0, [x1], #8`` per register,
            then a store of the pass number to ``DONE_ADDRESS`` (unbacked: the vCPU exits
            to userspace with ``KVM_EXIT_MMIO``); after the last pass, a branch-to-self
0x0800      exception vectors (VBAR_EL1): every entry stores ELR_EL1 to ``FAULT_ADDRESS``
            and ESR_EL1 to ``FAULT_ADDRESS + 8``, so an MRS that traps is reported, never
            looped on
0x2000      results: one 64-bit slot per register per pass, in ``registers`` order
=========== =========================================================================

Two passes make a guest that can *move*: it reads its registers, pauses at the first MMIO exit,
and after its vCPU state and memory were restored on another host it resumes and reads them again.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from armcpu import catalog
from armcpu.catalog import Register

RAM_BASE = 0x4000_0000
RAM_SIZE = 0x1_0000  # 64 KiB: a whole number of pages for 4K, 16K and 64K host page sizes
VECTORS_OFFSET = 0x800
RESULTS_OFFSET = 0x2000
DONE_ADDRESS = 0x0A00_0000  # unbacked and clear of the GICv3 frames the verifier maps
FAULT_ADDRESS = DONE_ADDRESS + 0x100
PASSES = 2

_MAX_REGISTERS = (RAM_SIZE - RESULTS_OFFSET) // (8 * PASSES)


def mrs(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int) -> int:
    """``MRS Xt, S<op0>_<op1>_C<crn>_C<crm>_<op2>``: 1101 0101 0011 op0[0] op1 CRn CRm op2 Rt."""
    if op0 not in (2, 3) or not (0 <= op1 < 8 and 0 <= crn < 16 and 0 <= crm < 16 and 0 <= op2 < 8 and 0 <= rt < 32):
        raise ValueError(f"no MRS encoding for op0={op0} op1={op1} CRn={crn} CRm={crm} op2={op2} Rt={rt}")
    return 0xD5200000 | (op0 << 19) | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5) | rt


def movz(rd: int, imm16: int, shift: int) -> int:
    return 0xD2800000 | ((shift // 16) << 21) | ((imm16 & 0xFFFF) << 5) | rd


def movk(rd: int, imm16: int, shift: int) -> int:
    return 0xF2800000 | ((shift // 16) << 21) | ((imm16 & 0xFFFF) << 5) | rd


def mov64(rd: int, value: int) -> list[int]:
    """Load a 64-bit constant: MOVZ for the low half-word, MOVK for each non-zero one above."""
    words = [movz(rd, value & 0xFFFF, 0)]
    words += [movk(rd, (value >> s) & 0xFFFF, s) for s in (16, 32, 48) if (value >> s) & 0xFFFF]
    return words


def msr(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int) -> int:
    """``MSR S<op0>_<op1>_C<crn>_C<crm>_<op2>, Xt`` (L = 0)."""
    return mrs(op0, op1, crn, crm, op2, rt) & ~(1 << 21)


ISB = 0xD5033FDF


def str_post(rt: int, rn: int, imm: int) -> int:
    """``STR Xt, [Xn], #imm`` (post-index, imm in -256..255)."""
    return 0xF8000400 | ((imm & 0x1FF) << 12) | (rn << 5) | rt


def str_imm(rt: int, rn: int, offset: int) -> int:
    """``STR Xt, [Xn, #offset]`` (unsigned offset, a multiple of 8)."""
    return 0xF9000000 | ((offset // 8) << 10) | (rn << 5) | rt


BRANCH_TO_SELF = 0x14000000


def branch(words: int) -> int:
    """``B`` by ``words`` instructions (negative: backwards)."""
    return 0x14000000 | (words & 0x3FFFFFF)
ELR_EL1 = (3, 0, 4, 0, 1)
ESR_EL1 = (3, 0, 5, 2, 0)
VBAR_EL1 = (3, 0, 12, 0, 0)


@dataclass(frozen=True)
class Payload:
    """The guest image and where each MRS sits (to name the register an exception points at)."""

    image: bytes
    registers: tuple[str, ...]
    mrs_offsets: Mapping[int, tuple[int, str]]  # code offset -> (pass, register)

    @property
    def entry(self) -> int:
        return RAM_BASE

    @property
    def vbar(self) -> int:
        return RAM_BASE + VECTORS_OFFSET

    def results_window(self) -> tuple[int, int]:
        """Offset and length of the results in guest memory (all passes)."""
        return RESULTS_OFFSET, PASSES * 8 * len(self.registers)

    def results(self, window: bytes, pass_number: int = 1) -> dict[str, int]:
        """What the guest read in ``pass_number`` (1-based), from the bytes of its results window."""
        if not 1 <= pass_number <= PASSES:
            raise ValueError(f"pass {pass_number}: the payload makes {PASSES}")
        values = struct.unpack_from(f"<{len(self.registers)}Q", window, (pass_number - 1) * 8 * len(self.registers))
        return dict(zip(self.registers, values, strict=True))

    def elf(self) -> bytes:
        """The image as a minimal ELF64 executable loaded at ``RAM_BASE`` (what QEMU's ``-kernel``
        starts at its entry point, at EL1, with no boot loader in front)."""
        header_size, phdr_size = 64, 56
        offset = 0x1000  # the image's file offset: page-aligned, past the headers
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, little-endian, version 1, SysV
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, RAM_BASE, header_size, 0, 0, header_size, phdr_size, 1, 0, 0, 0)
        phdr = struct.pack("<IIQQQQQQ", 1, 7, offset, RAM_BASE, RAM_BASE, len(self.image), RAM_SIZE, 0x1000)  # PT_LOAD RWX
        return (ehdr + phdr).ljust(offset, b"\0") + self.image

    def faulting_register(self, pc: int) -> str | None:
        """The register whose MRS raised the exception whose ELR_EL1 is ``pc``, if any."""
        hit = self.mrs_offsets.get(pc - RAM_BASE)
        return None if hit is None else hit[1]


def build(registers: Sequence[Register] | None = None, repeat_last_pass: bool = False) -> Payload:
    """The payload reading ``registers`` (default: every catalogued register, catalog order).

    ``repeat_last_pass``: after its last pass the guest starts that pass again, for ever, instead
    of stopping, so that a guest migrated by a VMM that gives the test no exit to wait for (stock
    QEMU) keeps re-reading its registers on whichever host it now runs on.
    """
    regs = list(catalog.registers().values()) if registers is None else list(registers)
    if not regs or len(regs) > _MAX_REGISTERS:
        raise ValueError(f"the payload reads 1..{_MAX_REGISTERS} registers, not {len(regs)}")
    code: list[int] = []
    offsets: dict[int, tuple[int, str]] = {}
    code += mov64(4, RAM_BASE + VECTORS_OFFSET)  # its own exception vectors: no VMM has to set VBAR_EL1
    code += [msr(*VBAR_EL1, rt=4), ISB]
    code += mov64(1, RAM_BASE + RESULTS_OFFSET)  # x1: where the next result goes
    code += mov64(2, DONE_ADDRESS)  # x2: the unbacked address whose store exits to userspace
    last_pass_start = 0
    for pass_number in range(1, PASSES + 1):
        if pass_number == PASSES:
            last_pass_start = len(code)
            code += mov64(1, RAM_BASE + RESULTS_OFFSET + (PASSES - 1) * 8 * len(regs))
        for reg in regs:
            offsets[4 * len(code)] = (pass_number, reg.name)
            code.append(mrs(*reg.encoding, rt=0))
            code.append(str_post(0, 1, 8))
        code += mov64(3, pass_number)
        code.append(str_imm(3, 2, 0))
    code.append(branch(last_pass_start - len(code)) if repeat_last_pass else BRANCH_TO_SELF)
    if 4 * len(code) > VECTORS_OFFSET:
        raise ValueError(f"{len(regs)} registers make {4 * len(code)} bytes of code, more than {VECTORS_OFFSET}")
    vector = [*mov64(4, FAULT_ADDRESS), mrs(*ELR_EL1, rt=5), str_imm(5, 4, 0), mrs(*ESR_EL1, rt=6), str_imm(6, 4, 8), BRANCH_TO_SELF]
    image = bytearray(RESULTS_OFFSET)
    struct.pack_into(f"<{len(code)}I", image, 0, *code)
    for entry in range(16):  # 16 vectors of 0x80 bytes each
        struct.pack_into(f"<{len(vector)}I", image, VECTORS_OFFSET + 0x80 * entry, *vector)
    return Payload(image=bytes(image), registers=tuple(r.name for r in regs), mrs_offsets=offsets)
