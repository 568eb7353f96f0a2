"""The verifier's guest payload: instruction encodings, layout, and reading results back."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from armcpu import catalog, guest_payload
from armcpu.guest_payload import PASSES, RAM_BASE, RESULTS_OFFSET, VECTORS_OFFSET, build, mrs

# Words as binutils' aarch64 objdump disassembles them (checked by hand with `aarch64-linux-gnu-objdump -D -b binary -m aarch64`).
KNOWN = {
    0xD5380000: "mrs x0, midr_el1",
    0xD5380600: "mrs x0, id_aa64isar0_el1",
    0xD53B0020: "mrs x0, ctr_el0",
    0xD53900E0: "mrs x0, aidr_el1",
    0xD5390020: "mrs x0, clidr_el1",
    0xD5384025: "mrs x5, elr_el1",
    0xD5385206: "mrs x6, esr_el1",
    0xD518C004: "msr vbar_el1, x4",
    0xF8008420: "str x0, [x1], #8",
    0xF9000043: "str x3, [x2]",
    0xF9000486: "str x6, [x4, #8]",
    0xD2840001: "mov x1, #0x2000",
    0xF2A80001: "movk x1, #0x4000, lsl #16",
}


def test_known_encodings() -> None:
    ours = {
        mrs(3, 0, 0, 0, 0, 0), mrs(*catalog.register("ID_AA64ISAR0_EL1").encoding, rt=0), mrs(3, 3, 0, 0, 1, 0),
        mrs(3, 1, 0, 0, 7, 0), mrs(3, 1, 0, 0, 1, 0), mrs(*guest_payload.ELR_EL1, rt=5), mrs(*guest_payload.ESR_EL1, rt=6),
        guest_payload.msr(*guest_payload.VBAR_EL1, rt=4), guest_payload.str_post(0, 1, 8), guest_payload.str_imm(3, 2, 0),
        guest_payload.str_imm(6, 4, 8), guest_payload.movz(1, 0x2000, 0), guest_payload.movk(1, 0x4000, 16),
    }
    assert ours == set(KNOWN)


def _decode_mrs(word: int) -> tuple[int, int, int, int, int, int]:
    assert word & 0xFFF00000 == 0xD5300000, f"{word:#x} is not an MRS with op0 in 2..3"
    return (2 + ((word >> 19) & 1), (word >> 16) & 7, (word >> 12) & 15, (word >> 8) & 15, (word >> 5) & 7, word & 31)


def test_every_catalogued_register_is_read_in_each_pass_at_the_offset_the_payload_names() -> None:
    payload = build()
    regs = list(catalog.registers().values())
    assert payload.registers == tuple(r.name for r in regs)
    assert len(payload.mrs_offsets) == PASSES * len(regs)
    for offset, (pass_number, name) in payload.mrs_offsets.items():
        word = struct.unpack_from("<I", payload.image, offset)[0]
        assert _decode_mrs(word)[:5] == catalog.register(name).encoding
        assert struct.unpack_from("<I", payload.image, offset + 4)[0] == guest_payload.str_post(0, 1, 8)
        assert payload.faulting_register(RAM_BASE + offset) == name
        assert 1 <= pass_number <= PASSES
    assert payload.faulting_register(RAM_BASE + 2) is None


def test_code_fits_below_the_vectors_and_every_vector_reports_the_fault() -> None:
    payload = build(repeat_last_pass=True)
    assert len(payload.image) == RESULTS_OFFSET
    for entry in range(16):
        at = VECTORS_OFFSET + 0x80 * entry
        words = struct.unpack_from("<7I", payload.image, at)
        assert words[2] == mrs(*guest_payload.ELR_EL1, rt=5) and words[-1] == guest_payload.BRANCH_TO_SELF


def test_the_repeating_payload_branches_back_to_its_last_pass() -> None:
    payload = build(repeat_last_pass=True)
    code_end = min(payload.mrs_offsets) - 4
    words = struct.unpack(f"<{VECTORS_OFFSET // 4}I", payload.image[:VECTORS_OFFSET])
    branch_at = max(i for i, w in enumerate(words) if w >> 26 == 0x5 and w != 0)
    offset = words[branch_at] & 0x3FFFFFF
    target = branch_at + (offset - (1 << 26) if offset >> 25 else offset)
    first_of_last_pass = min(o for o, (p, _) in payload.mrs_offsets.items() if p == PASSES) // 4
    assert code_end > 0 and target < first_of_last_pass and first_of_last_pass - target <= 4  # the MOVZ/MOVK of x1 before it


@given(st.lists(st.integers(0, (1 << 64) - 1), min_size=2 * len(catalog.registers()), max_size=2 * len(catalog.registers())))
def test_results_are_read_back_per_pass(values: list[int]) -> None:
    payload = build()
    offset, length = payload.results_window()
    assert offset == RESULTS_OFFSET and length == 8 * len(values)
    window = struct.pack(f"<{len(values)}Q", *values)
    n = len(payload.registers)
    assert list(payload.results(window, 1).values()) == values[:n]
    assert list(payload.results(window, 2).values()) == values[n:]


def test_elf_loads_the_image_at_ram_base_and_starts_there() -> None:
    payload = build(repeat_last_pass=True)
    elf = payload.elf()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1
    e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", elf, 16)
    assert (e_type, e_machine, e_entry) == (2, 183, RAM_BASE)
    p_type, _, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", elf, e_phoff)
    assert (p_type, p_vaddr, p_paddr, p_filesz, p_memsz) == (1, RAM_BASE, RAM_BASE, len(payload.image), guest_payload.RAM_SIZE)
    assert elf[p_offset:p_offset + p_filesz] == payload.image
