"""Whether a model's identity (MIDR) tells the truth about its features.

Software that picks code paths by MIDR instead of by ID registers or hwcaps (JITs: Skia, Mesa's
llvmpipe via LLVM) runs what the MIDR's core normally has. A model that hides some of that (SVE off
while the guest sees Neoverse-V2's MIDR, say) then executes instructions the VM traps: SIGILL, seen
in production on Graviton4 by another VMM (Firecracker PR 6116, upstream-2026-12.md). Linux hwcaps
are what such software expects, so the comparison is on hwcaps.

"Normally has" comes from real views of that core: the pool members with the model's implementer
and part, as their KVM shows them (what a guest with that MIDR gets on this cluster's own nodes of
that core); armcpu's named model of the core only where no member has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from armcpu import hwcaps, midr, named_models
from armcpu.model import Model
from armcpu.profile import Profile


@dataclass(frozen=True)
class IdentityCheck:
    core: str  # the model's MIDR in words
    hidden: tuple[str, ...]  # hwcaps that core normally has and the model lacks
    suggestion: str | None  # a member whose identity hides nothing (usable only where every node has cap 239)
    settable: bool  # every member's KVM can present another MIDR (cap 239)

    @property
    def truthful(self) -> bool:
        return not self.hidden


def _core(value: int) -> tuple[int, int]:
    decoded = midr.decode(value)
    return decoded.implementer, decoded.part


def _distinct(members: Sequence[Profile]) -> list[Profile]:
    """One member per distinct register set (a large pool has a few kinds of node)."""
    return list({tuple(sorted(m.registers.items())): m for m in members}.values())


def normally_has(core_midr: int, members: Sequence[Profile]) -> set[str]:
    """The hwcaps of real views of the core ``core_midr`` names: members with that implementer and part,
    and armcpu's named model of it."""
    core = _core(core_midr)
    seen: set[str] = set()
    views = [m.registers for m in _distinct(members) if _core(m.midr) == core]
    if not views:
        views = [n.registers for n in named_models.named_models().values() if _core(n.midr) == core]
    for registers in views:
        seen |= set(hwcaps.decode(registers))
    return seen


def check(model: Model, members: Sequence[Profile]) -> IdentityCheck:
    settable = bool(members) and all(m.kvm.writable_imp_id_regs is True for m in members)
    members = _distinct(members)
    have = set(hwcaps.decode(model.registers))
    own = model.value("MIDR_EL1")
    hidden = tuple(sorted(normally_has(own, members) - have))
    suggestion = None
    if hidden:
        honest = [m for m in members if _core(m.midr) != _core(own) and not normally_has(m.midr, members) - have]
        suggestion = min((m.name for m in honest), default=None)
    return IdentityCheck(midr.decode(own).describe(), hidden, suggestion, settable)


def message(found: IdentityCheck) -> str:
    if found.truthful:
        return f"the guest's MIDR ({found.core}) promises no hwcap the model lacks"
    text = (f"the guest sees the MIDR of {found.core}, which normally has {', '.join(found.hidden)}, but the model hides "
            f"them: software that picks code by MIDR instead of hwcaps may run those instructions and die with SIGILL")
    if found.suggestion and found.settable:
        text += f"; spec.identityFrom: {found.suggestion} presents an identity whose core has nothing the model hides"
    elif found.suggestion:
        text += (f"; {found.suggestion}'s identity would hide nothing, but presenting another node's MIDR needs "
                 "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (Linux 6.15+) on every node and a VMM that enables it")
    return text
