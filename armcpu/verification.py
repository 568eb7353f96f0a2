"""What a real kernel said about a model, compared field by field with what armcpu predicted.

Why: ``can_run`` is armcpu's *model* of KVM's accept rule. The agent's verifier writes a model into
a scratch vCPU and runs a guest that reads it back (``node_agent/probes/kvm_verify.py``); this
module turns those raw answers into verdicts: which registers KVM refused, which fields the guest
read differently from the model, and whether that agrees with ``can_run``. A disagreement between
the prediction and the kernel is a bug in armcpu's rules, so it is named down to the field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from armcpu import catalog

ACCEPTED = "accepted"
ABSENT = "ENOENT"
NOT_WRITTEN = "not written"  # the kernel does not know the register: its guest reads it as zero (RAZ)


@dataclass(frozen=True)
class RegisterAnswer:
    """One register of a verification: the value written, KVM's answer, what the guest read."""

    name: str
    written: int
    answer: str  # "accepted", or the errno name KVM_SET_ONE_REG failed with
    guest_read: int | None  # None: the guest did not get to read it

    @property
    def refused(self) -> bool:
        """A refusal: any errno, except a register the kernel lacks written as zero (what it reads)."""
        return self.answer != ACCEPTED and not (self.answer == ABSENT and self.written == 0)


@dataclass(frozen=True)
class FieldDisagreement:
    """One field where the kernel or the guest did not take the model's value."""

    field: str  # REGISTER.FIELD, or REGISTER.<bits 0x...> outside catalogued fields
    model: int
    node: int  # the field in the node's own view (what KVM was asked to change it from)
    kernel: str  # KVM's answer for the register
    guest: int | None  # the field as the guest read it

    def message(self) -> str:
        seen = "not read" if self.guest is None else f"{self.guest:#x}"
        return f"{self.field}: model {self.model:#x}, node {self.node:#x}, KVM_SET_ONE_REG {self.kernel}, guest read {seen}"


@dataclass(frozen=True)
class Verdict:
    """The kernel's verdict on one model on one node, beside armcpu's prediction."""

    answers: tuple[RegisterAnswer, ...]
    node_view: Mapping[str, int]  # the node's own registers, before anything was written
    ran: bool  # the guest ran to the end of its first pass
    run_error: str | None  # why it did not (an exception in the guest, an ioctl error), if so
    predicted: bool | None  # can_run's answer, None when not computed

    @property
    def accepted(self) -> bool:
        return not any(a.refused for a in self.answers)

    @property
    def guest_read_matches(self) -> bool | None:
        """Whether the guest read exactly the model (None when it never ran, or KVM refused some of it)."""
        if not self.ran or not self.accepted:
            return None
        return all(a.guest_read == a.written for a in self.answers)

    @property
    def ok(self) -> bool:
        return self.accepted and self.guest_read_matches is True

    @property
    def agrees_with_prediction(self) -> bool | None:
        """Whether ``can_run`` (which means: the guest will see exactly this model) said what the
        kernel did: accepted every write *and* let the guest read the model back."""
        return None if self.predicted is None else self.predicted == self.ok

    def disagreements(self) -> list[FieldDisagreement]:
        """Every field KVM refused (the fields the model changes in a refused register) or the
        guest read differently from the model, in catalog order."""
        out: list[FieldDisagreement] = []
        for a in self.answers:
            seen = a.guest_read
            if a.answer == NOT_WRITTEN:
                continue  # never asked: the vCPU could not be set up (``run_error`` says why)
            if not a.refused and (seen is None or seen == a.written):
                continue
            node = self.node_view.get(a.name, 0)
            reg = catalog.registers().get(a.name)
            fields = reg.fields if reg is not None else ()
            defined = reg.defined_mask if reg is not None else 0
            other = node if a.refused else (seen if seen is not None else a.written)
            for f in fields:
                if f.extract(a.written) != f.extract(other):
                    out.append(FieldDisagreement(f.qualified, f.extract(a.written), f.extract(node), a.answer,
                                                 None if seen is None else f.extract(seen)))
            stray = (a.written ^ other) & ~defined
            if stray:
                out.append(FieldDisagreement(f"{a.name}.<bits {stray:#x}>", a.written & stray, node & stray, a.answer,
                                             None if seen is None else seen & stray))
            elif a.refused and a.written == node:
                out.append(FieldDisagreement(f"{a.name}.<the node's own value>", a.written, node, a.answer, seen))
        return out


def verdict(
    model: Mapping[str, int], node_view: Mapping[str, int], answers: Mapping[str, str], guest: Mapping[str, int] | None,
    run_error: str | None = None, predicted: bool | None = None,
) -> Verdict:
    """Assemble a verdict from the model, the node's view, KVM's answer per register and the guest's reads."""
    order = {name: i for i, name in enumerate(catalog.registers())}
    rows = tuple(
        RegisterAnswer(name, value, answers.get(name, NOT_WRITTEN), None if guest is None else guest.get(name))
        for name, value in sorted(model.items(), key=lambda kv: order.get(kv[0], len(order)))
    )
    return Verdict(answers=rows, node_view=dict(node_view), ran=guest is not None and run_error is None,
                   run_error=run_error, predicted=predicted)


def verification_key(registers: Mapping[str, int]) -> str:
    """16 hex digits naming exactly what was verified: every register of the model, identity
    included (unlike the fingerprint: a model that only changes MIDR needs the kernel's word again)."""
    text = "\n".join(f"{name}={value:016x}" for name, value in sorted(registers.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


MAX_DISAGREEMENTS = 16
MAX_MESSAGE = 256


@dataclass(frozen=True)
class KernelVerdict:
    """A node's kernel's answer on one model, as its agent publishes it in the NodeCpuProfile.

    ``boot_id`` ties it to one kernel boot: a node that reboots (perhaps into another kernel) is
    verified again.
    """

    key: str  # verification_key of the model's registers
    accepted: bool
    guest_read_matches: bool | None
    boot_id: str = ""
    model: str = ""  # the CpuModel it was verified for (informational)
    revision: int = 0
    disagreements: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.accepted and self.guest_read_matches is True

    @classmethod
    def of(cls, key: str, result: Verdict, boot_id: str = "", model: str = "", revision: int = 0) -> KernelVerdict:
        messages = [d.message()[:MAX_MESSAGE] for d in result.disagreements()]
        if result.run_error and not messages:
            messages = [result.run_error[:MAX_MESSAGE]]
        if len(messages) > MAX_DISAGREEMENTS:
            messages = [*messages[:MAX_DISAGREEMENTS - 1], f"and {len(messages) - MAX_DISAGREEMENTS + 1} more"]
        return cls(key=key, accepted=result.accepted, guest_read_matches=result.guest_read_matches, boot_id=boot_id,
                   model=model, revision=revision, disagreements=tuple(messages))
