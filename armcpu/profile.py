"""CPU profiles: the registers one node presents to a guest, in the JSON format of docs/profile-format.md.

A profile is parsed from plain data (``dict``), never from a file path: callers do the I/O and
pass a ``source`` label so that every error names where the bad value came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from armcpu import catalog
from armcpu.catalog import RegisterKind
from armcpu.verification import MAX_DISAGREEMENTS, MAX_MESSAGE, KernelVerdict

FORMAT_VERSION = 1
# Registers the architecture defines as 32 bits wide (AArch32 views and MIDR): upper bits are RES0.
_MAX_REGISTERS = 256


class ProfileError(ValueError):
    """A profile is malformed; the message names the source and the field."""


@dataclass(frozen=True)
class Core:
    """One distinct core type of a node (big.LITTLE nodes have several)."""

    midr: int
    revidr: int = 0
    aidr: int = 0
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class KvmInfo:
    """What the KVM probe learnt besides the registers; None fields were not determined."""

    vcpu_features: tuple[str, ...] = ()
    writable_imp_id_regs: bool | None = None  # KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (239)
    reg_mask_ranges: bool | None = None  # KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES (230)
    vendor_hyp_bmap_2: int | None = None  # KVM_REG_ARM_VENDOR_HYP_BMAP_2 (errata hypercalls)


@dataclass(frozen=True)
class Profile:
    """What one CPU (or node) presents: ID register values and what KVM lets userspace change."""

    name: str
    registers: Mapping[str, int]
    writable: Mapping[str, int] | None = None  # None: the node reported no writable masks
    cores: tuple[Core, ...] = ()
    probe: str | None = None
    kernel: str | None = None
    source: str | None = None
    hwcaps: tuple[str, ...] = ()
    kvm: KvmInfo = field(default_factory=KvmInfo)
    verifications: tuple[KernelVerdict, ...] = ()  # what this node's kernel said about models (agent's verifier)
    # registers a guest started with this view reads differently from ``registers`` (None: not measured)
    guest_view: Mapping[str, int] | None = None

    def verdict(self, key: str) -> KernelVerdict | None:
        """This node's kernel's verdict on the model with verification key ``key``, if it gave one."""
        return next((v for v in self.verifications if v.key == key), None)

    def value(self, register: str) -> int:
        """A register's value; an absent ID register reads as zero (RAZ)."""
        return self.registers.get(register, 0)

    @property
    def midr(self) -> int:
        if "MIDR_EL1" in self.registers:
            return self.registers["MIDR_EL1"]
        return self.cores[0].midr if self.cores else 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.registers)


def register_width(name: str) -> int:
    if name == "MIDR_EL1" or (not name.startswith("ID_AA64") and name.startswith(("ID_", "MVFR"))):
        return 32
    return 64


def parse_value(raw: object, where: str, width: int = 64) -> int:
    """A register value from JSON: a hex string ``"0x..."`` or a non-negative integer."""
    if isinstance(raw, bool):
        raise ProfileError(f"{where}: expected a hex string like \"0x1f\", got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip().lower()
        if not text.startswith("0x") or len(text) < 3:
            raise ProfileError(f"{where}: {raw!r} is not a hex value (write it as \"0x...\")")
        try:
            value = int(text, 16)
        except ValueError:
            raise ProfileError(f"{where}: {raw!r} is not valid hex") from None
    else:
        raise ProfileError(f"{where}: expected a hex string, got {type(raw).__name__}")
    if value < 0 or value >> width:
        raise ProfileError(f"{where}: {raw!r} is wider than the register's {width} bits")
    return value


def _parse_registers(raw: object, where: str) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: expected an object of REGISTER: \"0x...\"")
    if len(raw) > _MAX_REGISTERS:
        raise ProfileError(f"{where}: {len(raw)} entries, more than the {_MAX_REGISTERS} allowed")
    out: dict[str, int] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ProfileError(f"{where}: register names must be strings, got {key!r}")
        try:
            name = catalog.canonical_register_name(key)
        except KeyError:
            raise ProfileError(f"{where}.{key}: unknown register {key!r}") from None
        out[name] = parse_value(value, f"{where}.{key}", register_width(name))
    return out


def _parse_cores(raw: object, where: str) -> tuple[Core, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProfileError(f"{where}: expected a list of cores")
    cores = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping) or "midr" not in item:
            raise ProfileError(f"{here}: expected an object with at least \"midr\"")
        cpus = item.get("cpus", [])
        if not isinstance(cpus, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in cpus):
            raise ProfileError(f"{here}.cpus: expected a list of CPU numbers")
        cores.append(
            Core(
                midr=parse_value(item["midr"], f"{here}.midr", 32),
                revidr=parse_value(item.get("revidr", "0x0"), f"{here}.revidr"),
                aidr=parse_value(item.get("aidr", "0x0"), f"{here}.aidr"),
                cpus=tuple(cpus),
            )
        )
    return tuple(cores)


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ProfileError(f"{where}.{key}: expected a string, got {type(value).__name__}")


def _parse_kvm(raw: object, where: str) -> KvmInfo:
    if raw is None:
        return KvmInfo()
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: expected an object")
    feats = raw.get("vcpu_features", [])
    if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
        raise ProfileError(f"{where}.vcpu_features: expected a list of strings")
    flags: dict[str, bool | None] = {}
    for key in ("writable_imp_id_regs", "reg_mask_ranges"):
        value = raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise ProfileError(f"{where}.{key}: expected true, false or null")
        flags[key] = value
    bmap = raw.get("vendor_hyp_bmap_2")
    return KvmInfo(
        vcpu_features=tuple(feats),
        writable_imp_id_regs=flags["writable_imp_id_regs"],
        reg_mask_ranges=flags["reg_mask_ranges"],
        vendor_hyp_bmap_2=None if bmap is None else parse_value(bmap, f"{where}.vendor_hyp_bmap_2"),
    )


MAX_VERIFICATIONS = 32
_KEY = frozenset("0123456789abcdef")


def _parse_verifications(raw: object, where: str) -> tuple[KernelVerdict, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_VERIFICATIONS:
        raise ProfileError(f"{where}: expected a list of at most {MAX_VERIFICATIONS} verdicts")
    out = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ProfileError(f"{here}: expected an object")
        key = item.get("key")
        if not isinstance(key, str) or len(key) != 16 or not set(key) <= _KEY:
            raise ProfileError(f"{here}.key: expected 16 lower-case hex digits, got {key!r}")
        accepted, read = item.get("accepted"), item.get("guest_read_matches")
        if not isinstance(accepted, bool) or not (read is None or isinstance(read, bool)):
            raise ProfileError(f"{here}: accepted must be true/false and guest_read_matches true/false/null")
        messages = item.get("disagreements", [])
        if not isinstance(messages, list) or len(messages) > MAX_DISAGREEMENTS or not all(
                isinstance(m, str) and len(m) <= MAX_MESSAGE for m in messages):
            raise ProfileError(f"{here}.disagreements: expected at most {MAX_DISAGREEMENTS} strings of at most {MAX_MESSAGE} characters")
        revision = item.get("revision", 0)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise ProfileError(f"{here}.revision: expected a non-negative integer")
        texts = {k: item.get(k, "") for k in ("boot_id", "model")}
        if not all(isinstance(v, str) and len(v) <= 253 for v in texts.values()):
            raise ProfileError(f"{here}: boot_id and model must be strings of at most 253 characters")
        out.append(KernelVerdict(key=key, accepted=accepted, guest_read_matches=read, boot_id=str(texts["boot_id"]),
                                 model=str(texts["model"]), revision=revision, disagreements=tuple(messages)))
    return tuple(out)


def from_dict(data: object, source: str = "profile") -> Profile:
    """Parse a profile object; ``source`` (e.g. a file name) prefixes every error."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{source}: expected a JSON object")
    registers = _parse_registers(data.get("registers", {}), f"{source}: registers")
    if "midr" in data and data["midr"] is not None:
        midr = parse_value(data["midr"], f"{source}: midr", 32)
        registers.setdefault("MIDR_EL1", midr)
    if not registers:
        raise ProfileError(f"{source}: registers: no register values (a profile needs at least one)")
    writable = None
    if data.get("writable_masks") is not None:
        writable = _parse_registers(data["writable_masks"], f"{source}: writable_masks")
    hwcaps_raw = data.get("cpuinfo_features", data.get("hwcaps", ()))
    if isinstance(hwcaps_raw, str):
        hwcaps = tuple(hwcaps_raw.split())
    elif isinstance(hwcaps_raw, (list, tuple)) and all(isinstance(h, str) for h in hwcaps_raw):
        hwcaps = tuple(hwcaps_raw)
    else:
        raise ProfileError(f"{source}: cpuinfo_features: expected a string or a list of strings")
    name = _optional_str(data, "name", source) or source
    return Profile(
        name=name,
        registers=registers,
        writable=writable,
        cores=_parse_cores(data.get("cores"), f"{source}: cores"),
        probe=_optional_str(data, "probe", source),
        kernel=_optional_str(data, "kernel", source),
        source=_optional_str(data, "source", source),
        hwcaps=hwcaps,
        kvm=_parse_kvm(data.get("kvm"), f"{source}: kvm"),
        verifications=_parse_verifications(data.get("verifications"), f"{source}: verifications"),
        guest_view=None if data.get("guest_view") is None else _parse_registers(data["guest_view"], f"{source}: guest_view"),
    )


def hex64(value: int) -> str:
    return f"0x{value:016x}"


def to_dict(profile: Profile) -> dict[str, Any]:
    """The canonical JSON form (what the agent publishes and the CLI reads)."""
    out: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "name": profile.name,
        "midr": f"0x{profile.midr:08x}",
        "registers": {k: hex64(v) for k, v in sorted(profile.registers.items())},
        "fingerprint": profile.fingerprint,
    }
    if profile.writable is not None:
        out["writable_masks"] = {k: hex64(v) for k, v in sorted(profile.writable.items())}
    if profile.cores:
        out["cores"] = [
            {"midr": f"0x{c.midr:08x}", "revidr": hex64(c.revidr), "aidr": hex64(c.aidr), "cpus": list(c.cpus)}
            for c in profile.cores
        ]
    for key in ("probe", "kernel", "source"):
        if getattr(profile, key) is not None:
            out[key] = getattr(profile, key)
    if profile.hwcaps:
        out["cpuinfo_features"] = " ".join(profile.hwcaps)
    if profile.kvm != KvmInfo():
        kvm = profile.kvm
        out["kvm"] = {
            "vcpu_features": list(kvm.vcpu_features),
            "writable_imp_id_regs": kvm.writable_imp_id_regs,
            "reg_mask_ranges": kvm.reg_mask_ranges,
            "vendor_hyp_bmap_2": None if kvm.vendor_hyp_bmap_2 is None else hex64(kvm.vendor_hyp_bmap_2),
        }
    if profile.guest_view is not None:
        out["guest_view"] = {k: hex64(v) for k, v in sorted(profile.guest_view.items())}
    if profile.verifications:
        out["verifications"] = [
            {"key": v.key, "model": v.model, "revision": v.revision, "boot_id": v.boot_id, "accepted": v.accepted,
             "guest_read_matches": v.guest_read_matches, "disagreements": list(v.disagreements)}
            for v in profile.verifications
        ]
    return out


def fingerprint(registers: Mapping[str, int]) -> str:
    """A 16-hex-digit hash of the feature and cache registers, usable as a label value.

    Covered: every catalogued feature and cache register (absent ones count as zero, so a dump
    without ID_AA64SMFR0 and one with it at 0 agree). Not covered: MIDR/REVIDR/AIDR, because
    nodes that present the same features migrate alike whatever their stepping; identity is
    published as its own label and handled by the model's identity rules.
    """
    lines = []
    for name, reg in sorted(catalog.registers().items()):
        if reg.kind is RegisterKind.IDENTITY:
            continue
        lines.append(f"{name}={registers.get(name, 0):016x}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
