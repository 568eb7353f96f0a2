"""Typed view of the ID register catalog (`catalog_data.CATALOG_TEXT`).

The catalog answers, for every ID register a KVM guest sees: where each field sits, whether it is
signed, and how Linux combines two different values of it (the safe-value rule). Everything else in
armcpu (FEAT decoding, combine, can_run, rendering) is computed from this one table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property

from armcpu.catalog_data import CATALOG_TEXT


class Rule(enum.Enum):
    """Linux's ``enum ftr_type``: how two different values of one field are combined."""

    LOWER = "LOWER_SAFE"
    HIGHER = "HIGHER_SAFE"
    HIGHER_OR_ZERO = "HIGHER_OR_ZERO_SAFE"
    EXACT = "EXACT"
    NONE = "NONE"  # no kernel entry: sanitised to 0, never shown to a guest


class RegisterKind(enum.Enum):
    FEATURE = "feature"
    CACHE = "cache"
    IDENTITY = "identity"


@dataclass(frozen=True)
class Field:
    """One field of one ID register."""

    register: str
    name: str
    lsb: int
    width: int
    signed: bool
    rule: Rule
    safe: int

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    @property
    def max_value(self) -> int:
        return (1 << self.width) - 1

    @property
    def qualified(self) -> str:
        return f"{self.register}.{self.name}"

    def extract(self, register_value: int) -> int:
        """The field's raw (unsigned) bits."""
        return (register_value >> self.lsb) & self.max_value

    def insert(self, register_value: int, field_value: int) -> int:
        if not 0 <= field_value <= self.max_value:
            raise ValueError(
                f"{self.qualified}: value {field_value:#x} does not fit in {self.width} bits"
            )
        return (register_value & ~self.mask) | (field_value << self.lsb)

    def ordinal(self, field_value: int) -> int:
        """The value as the architecture compares it (two's complement for signed fields)."""
        if self.signed and field_value >> (self.width - 1):
            return field_value - (1 << self.width)
        return field_value


@dataclass(frozen=True)
class Register:
    """One system register: its encoding (for KVM_GET_ONE_REG) and its fields."""

    name: str
    op0: int
    op1: int
    crn: int
    crm: int
    op2: int
    kind: RegisterKind
    fields: tuple[Field, ...]

    @property
    def encoding(self) -> tuple[int, int, int, int, int]:
        return (self.op0, self.op1, self.crn, self.crm, self.op2)

    @cached_property
    def defined_mask(self) -> int:
        """Every bit some catalogued field covers (computed once per register: the fold asks per node)."""
        mask = 0
        for f in self.fields:
            mask |= f.mask
        return mask

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name.lower() == name.lower():
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def decode(self, value: int) -> dict[str, int]:
        return {f.name: f.extract(value) for f in self.fields}


class CatalogError(ValueError):
    """The catalog text is malformed (a bug in armcpu, caught by the tests)."""


def _parse_field(register: str, line: str) -> Field:
    parts = line.split()
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "signed"):
        raise CatalogError(f"bad field line under {register}: {line!r}")
    name, bits, rule_text = parts[:3]
    msb_text, _, lsb_text = bits.partition(":")
    msb, lsb = int(msb_text), int(lsb_text)
    rule_name, _, safe_text = rule_text.partition("=")
    safe = int(safe_text, 0) if safe_text else 0
    if msb < lsb or msb > 63:
        raise CatalogError(f"bad bit range {bits} for {register}.{name}")
    return Field(
        register=register,
        name=name,
        lsb=lsb,
        width=msb - lsb + 1,
        signed=len(parts) == 4,
        rule=Rule[rule_name],
        safe=safe,
    )


def parse_catalog(text: str) -> dict[str, Register]:
    """Parse catalog text into registers keyed by name, checking that no two fields overlap."""
    registers: dict[str, Register] = {}
    header: list[str] | None = None
    fields: list[Field] = []

    def flush() -> None:
        if header is None:
            return
        name, op0, op1, crn, crm, op2, kind = header
        mask = 0
        for f in fields:
            if mask & f.mask:
                raise CatalogError(f"{f.qualified} overlaps another field")
            mask |= f.mask
        registers[name] = Register(
            name, int(op0), int(op1), int(crn), int(crm), int(op2), RegisterKind(kind),
            tuple(fields),
        )

    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if header is None:
                raise CatalogError(f"field line before any register: {raw!r}")
            fields.append(_parse_field(header[0], raw.strip()))
        else:
            flush()
            header = raw.split()
            if len(header) != 7:
                raise CatalogError(f"bad register line: {raw!r}")
            fields = []
    flush()
    return registers


@cache
def registers() -> Mapping[str, Register]:
    """All catalogued registers, by canonical name (e.g. ``ID_AA64ISAR0_EL1``)."""
    return parse_catalog(CATALOG_TEXT)


def register(name: str) -> Register:
    """Look a register up by name, accepting any letter case and a missing ``_EL1``/``_EL0``."""
    canonical = canonical_register_name(name)
    return registers()[canonical]


def canonical_register_name(name: str) -> str:
    upper = name.strip().upper()
    regs = registers()
    if upper in regs:
        return upper
    for suffix in ("_EL1", "_EL0"):
        if upper + suffix in regs:
            return upper + suffix
    raise KeyError(f"unknown register {name!r}")


def field(register_name: str, field_name: str) -> Field:
    return register(register_name).field(field_name)


def parse_field_ref(ref: str) -> Field:
    """``"ID_AA64ISAR0_EL1.AES"`` -> the Field; raises KeyError naming what is unknown."""
    reg, dot, name = ref.partition(".")
    if not dot or not name:
        raise KeyError(f"{ref!r} is not REGISTER.FIELD")
    return field(reg, name)


def all_fields() -> Iterator[Field]:
    for reg in registers().values():
        yield from reg.fields


def sysreg_id(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """KVM one-reg id of a 64-bit system register (``KVM_REG_ARM64 | SIZE_U64 | SYSREG``)."""
    return (
        0x6000000000000000
        | 0x0030000000000000
        | (0x13 << 16)
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
    )


def feature_id_range_index(op0: int, op1: int, crn: int, crm: int, op2: int) -> int | None:
    """Index of a register in KVM's 192-entry writable-mask array, or None outside the range."""
    op1_index = {0: 0, 1: 1, 3: 2}.get(op1)
    if op0 != 3 or crn != 0 or op1_index is None or not 0 <= crm <= 7:
        return None
    return (op1_index << 6) | (crm << 3) | op2
