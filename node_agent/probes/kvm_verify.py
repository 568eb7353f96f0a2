"""Write a model into a real vCPU and let a guest read it back: the kernel's own verdict on a model.

The way a VMM starts a guest (QEMU's order): a VM with the largest IPA size, ``KVM_CAP_ARM_WRITABLE_IMP_ID_REGS``
enabled before any vCPU exists when the model's identity (MIDR/REVIDR/AIDR) differs from the
node's, one vCPU initialised with the vCPU features the model implies (PSCI 0.2 always; PMUv3, SVE
and pointer authentication only when the model has them), an in-kernel GICv3, guest memory. Then
every register of the model is written with ``KVM_SET_ONE_REG`` before the first run and KVM's
answer kept per register; the payload of :mod:`armcpu.guest_payload` runs with ``KVM_RUN`` and
its stores are read back from guest memory. Nothing here decides whether the model is good: the
kernel's answers go to :func:`armcpu.verification.verdict`.

The same session can pause the guest after its first pass and save its vCPU state (every
register ``KVM_GET_REG_LIST`` names) and memory (:func:`save`); :func:`resume` starts a fresh
vCPU on another node from that state, before its first run, the way an incoming migration does.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from armcpu import catalog, guest_payload, kvm
from armcpu.guest_payload import Payload
from node_agent.probes import ProbeError
from node_agent.probes.kvm_ioctl import (
    CAP_ARM_PMU_V3,
    CAP_ARM_PSCI_0_2,
    CAP_ARM_PTRAUTH_ADDRESS,
    CAP_ARM_PTRAUTH_GENERIC,
    CAP_ARM_SVE,
    CAP_ARM_VM_IPA_SIZE,
    CAP_ARM_WRITABLE_IMP_ID_REGS,
    KVM_API_VERSION,
    VCPU_PMU_V3,
    VCPU_PSCI_0_2,
    VCPU_PTRAUTH_ADDRESS,
    VCPU_PTRAUTH_GENERIC,
    VCPU_SVE,
)
from node_agent.probes.kvm_session import KVM_EXIT_MMIO, Exit, KvmSession

GIC_DISTRIBUTOR = 0x0800_0000  # QEMU virt's GICv3 frames: below the guest's RAM and its exit addresses
GIC_REDISTRIBUTOR = 0x080A_0000
PMU_IRQ = 23  # the PPI QEMU virt gives the PMU
CORE_REG = 0x6030_0000_0010_0000  # KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE
PC = CORE_REG | (32 * 8 // 4)  # offsetof(struct kvm_regs, regs.pc) / 4
IDENTITY = ("MIDR_EL1", "REVIDR_EL1", "AIDR_EL1")
SVE_VLS = 0x6060_0000_0015_FFFF  # KVM_REG_ARM64_SVE_VLS: the vector lengths; written only before KVM_ARM_VCPU_FINALIZE
_FEATURE_BITS = {"psci-0.2": VCPU_PSCI_0_2, "pmu-v3": VCPU_PMU_V3, "sve": VCPU_SVE,
                 "ptrauth-address": VCPU_PTRAUTH_ADDRESS, "ptrauth-generic": VCPU_PTRAUTH_GENERIC}


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")


def wanted_features(model: Mapping[str, int]) -> tuple[str, ...]:
    """The vCPU features a VMM starts this model with: a feature group the model has switched
    off (every field 0) is not requested, so KVM's limit there is 0 as the model says."""
    out = ["psci-0.2"]
    if catalog.field("ID_AA64DFR0_EL1", "PMUVer").extract(model.get("ID_AA64DFR0_EL1", 0)) != 0:
        out.append("pmu-v3")
    if not kvm.vcpu_group_is_off(lambda r: model.get(r, 0), "sve"):
        out.append("sve")
    if not kvm.vcpu_group_is_off(lambda r: model.get(r, 0), "pauth"):
        out += ["ptrauth-address", "ptrauth-generic"]
    return tuple(out)


@dataclass
class Guest:
    """A started guest: what was asked for, what KVM answered, what the guest read."""

    features: tuple[str, ...]  # vCPU features the vCPU was initialised with
    identity_cap: str  # KVM_CAP_ARM_WRITABLE_IMP_ID_REGS: enabled / not needed / unavailable / <errno>
    answers: dict[str, str] = field(default_factory=dict)  # register -> accepted | errno name
    reads: dict[str, int] | None = None  # pass 1 of the payload
    run_error: str | None = None
    exits: list[str] = field(default_factory=list)


def _payload() -> Payload:
    return guest_payload.build()


def _setup(session: KvmSession, features: tuple[str, ...], identity: bool, before_finalize: dict[int, bytes] | None = None) -> str:
    """Open, create the VM (cap 239 first when asked), the vCPU and the GIC; returns the cap's state.
    ``before_finalize``: registers that may only be written between KVM_ARM_VCPU_INIT and
    KVM_ARM_VCPU_FINALIZE (an incoming guest's SVE vector lengths), as QEMU writes them."""
    session.open()
    version = session.api_version()
    if version != KVM_API_VERSION:
        raise ProbeError(f"KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}")
    ipa_bits = session.check_extension(CAP_ARM_VM_IPA_SIZE, on_vm=False)
    session.create_vm(ipa_bits)
    offered = {
        "psci-0.2": session.check_extension(CAP_ARM_PSCI_0_2) > 0,
        "pmu-v3": session.check_extension(CAP_ARM_PMU_V3) > 0,
        "sve": session.check_extension(CAP_ARM_SVE) > 0,
        "ptrauth-address": session.check_extension(CAP_ARM_PTRAUTH_ADDRESS) > 0,
        "ptrauth-generic": session.check_extension(CAP_ARM_PTRAUTH_GENERIC) > 0,
    }
    missing = [f for f in features if not offered[f]]
    if missing:
        raise ProbeError(f"this node's KVM does not offer the vCPU feature(s) the model needs: {', '.join(missing)}")
    cap = "not needed"
    if identity:
        if session.check_extension(CAP_ARM_WRITABLE_IMP_ID_REGS) <= 0:
            cap = "unavailable"
        else:
            try:
                session.enable_cap(CAP_ARM_WRITABLE_IMP_ID_REGS)
                cap = "enabled"
            except OSError as exc:
                cap = errno_name(exc)
    session.create_vcpu()
    target = session.preferred_target()
    session.vcpu_init(target, [_FEATURE_BITS[f] for f in features])
    for reg_id, value in (before_finalize or {}).items():
        session.set_reg(reg_id, value)
    if "sve" in features:
        session.finalize(VCPU_SVE)
    session.create_vgic_v3(GIC_DISTRIBUTOR, GIC_REDISTRIBUTOR)
    session.add_memory(guest_payload.RAM_BASE, guest_payload.RAM_SIZE)
    return cap


def _finish_setup(session: KvmSession, features: tuple[str, ...]) -> None:
    session.init_vgic()
    if "pmu-v3" in features:
        session.init_pmu(PMU_IRQ)


def _run_pass(session: KvmSession, guest: Guest, payload: Payload, pass_number: int, timeout: float) -> dict[str, int] | None:
    """Run until the payload reports the end of ``pass_number``; the reads, or None with ``run_error`` set."""
    try:
        exit_ = session.run(timeout=timeout)
    except OSError as exc:
        guest.run_error = f"KVM_RUN failed: {errno_name(exc)}" + (" (timed out)" if exc.errno == errno.EINTR else "")
        return None
    guest.exits.append(exit_.describe())
    if _is_done(exit_, pass_number):
        return payload.results(session.read_memory(*payload.results_window()), pass_number)
    guest.run_error = _explain(session, payload, exit_)
    return None


def _is_done(exit_: Exit, pass_number: int) -> bool:
    return exit_.reason == KVM_EXIT_MMIO and exit_.mmio_write and exit_.mmio_address == guest_payload.DONE_ADDRESS \
        and exit_.mmio_data == pass_number


def _explain(session: KvmSession, payload: Payload, exit_: Exit) -> str:
    if exit_.reason == KVM_EXIT_MMIO and exit_.mmio_address == guest_payload.FAULT_ADDRESS:
        register = payload.faulting_register(exit_.mmio_data)
        where = f"its MRS of {register}" if register else f"{exit_.mmio_data:#x}"
        return f"the guest took an exception at {where}"
    return f"the guest stopped with {exit_.describe()}, not at the end of its pass"


def start(session: KvmSession, model: Mapping[str, int], node_view: Mapping[str, int], timeout: float = 30.0) -> Guest:
    """Start a guest with ``model`` written (every register, before the first run) and run its
    first pass. ``node_view`` (the probe's registers of this node) decides only whether the
    identity cap is needed; KVM decides everything else."""
    payload = _payload()
    features = wanted_features(model)
    identity = any(model.get(r, 0) != node_view.get(r, 0) for r in IDENTITY if r in model)
    guest = Guest(features=features, identity_cap=_setup(session, features, identity))
    for reg in catalog.registers().values():
        if reg.name not in model:
            continue
        try:
            session.set_u64(catalog.sysreg_id(*reg.encoding), model[reg.name])
            guest.answers[reg.name] = "accepted"
        except OSError as exc:
            guest.answers[reg.name] = errno_name(exc)
    session.write_memory(0, payload.image)
    session.set_u64(PC, payload.entry)
    _finish_setup(session, features)
    guest.reads = _run_pass(session, guest, payload, 1, timeout)
    return guest


@dataclass(frozen=True)
class Saved:
    """A paused guest: its vCPU's features, every register KVM listed, and its memory."""

    features: tuple[str, ...]
    identity_cap: str
    registers: dict[int, bytes]
    memory: bytes
    reads: dict[str, int]  # what it read on the source

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "identity_cap": self.identity_cap,
                "registers": {f"{k:#018x}": v.hex() for k, v in self.registers.items()},
                "memory": self.memory.hex(), "reads": {k: f"{v:#018x}" for k, v in self.reads.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Saved:
        return cls(features=tuple(data["features"]), identity_cap=str(data["identity_cap"]),
                   registers={int(k, 16): bytes.fromhex(v) for k, v in data["registers"].items()},
                   memory=bytes.fromhex(data["memory"]), reads={k: int(v, 16) for k, v in data["reads"].items()})


def save(session: KvmSession, guest: Guest) -> Saved:
    """Pause a guest that finished its first pass: complete the pending MMIO exit without running
    guest code (``immediate_exit``, as a VMM stopping its vCPUs does), then read every register."""
    if guest.reads is None:
        raise ProbeError(f"cannot save a guest that did not finish its first pass: {guest.run_error}")
    try:
        session.run(immediate_exit=True)
    except OSError as exc:
        if exc.errno != errno.EINTR:
            raise ProbeError(f"KVM_RUN (immediate_exit) failed: {errno_name(exc)}") from None
    registers = {reg_id: session.get_reg(reg_id) for reg_id in session.reg_list()}
    memory = session.read_memory(0, guest_payload.RAM_SIZE)
    return Saved(guest.features, guest.identity_cap, registers, memory, guest.reads)


@dataclass
class Resumed:
    """A guest restored on this node: KVM's answer per saved register, and its second pass."""

    identity_cap: str
    answers: dict[int, str] = field(default_factory=dict)  # register id -> accepted | errno
    reads: dict[str, int] | None = None
    run_error: str | None = None
    exits: list[str] = field(default_factory=list)

    @property
    def refused(self) -> dict[int, str]:
        return {k: v for k, v in self.answers.items() if v != "accepted"}


def resume(session: KvmSession, saved: Saved, node_view: Mapping[str, int], timeout: float = 30.0) -> Resumed:
    """Restore ``saved`` into a fresh vCPU (every register, before the first run) and resume it.
    The identity cap is enabled when the guest's MIDR/REVIDR/AIDR differ from this node's
    (``node_view``), as a VMM that can set identity registers does on an incoming migration."""
    payload = _payload()
    ids_by_name = {r: catalog.sysreg_id(*catalog.register(r).encoding) for r in IDENTITY}
    identity = any(int.from_bytes(saved.registers[i], "little") != node_view.get(r, 0)
                   for r, i in ids_by_name.items() if i in saved.registers)
    resumed = Resumed(identity_cap="not reached")
    early = {SVE_VLS: saved.registers[SVE_VLS]} if SVE_VLS in saved.registers else {}
    try:
        cap = _setup(session, saved.features, identity, early)
    except OSError as exc:
        resumed.run_error = f"the vCPU could not be set up like the source's: {errno_name(exc)}"
        resumed.answers = {SVE_VLS: errno_name(exc)} if early else {}
        return resumed
    resumed.identity_cap = cap
    # ID registers first, as the VM-scoped ones must be: then everything else in KVM's list order.
    ids = {catalog.sysreg_id(*r.encoding) for r in catalog.registers().values()}
    order = sorted(saved.registers, key=lambda reg_id: (reg_id not in ids, reg_id))
    for reg_id in order:
        if reg_id in early:
            resumed.answers[reg_id] = "accepted"
            continue
        try:
            session.set_reg(reg_id, saved.registers[reg_id])
            resumed.answers[reg_id] = "accepted"
        except OSError as exc:
            resumed.answers[reg_id] = errno_name(exc)
    session.write_memory(0, saved.memory)
    _finish_setup(session, saved.features)
    if resumed.refused:
        resumed.run_error = "KVM refused saved registers: " + ", ".join(f"{register_name(k)} {v}" for k, v in sorted(resumed.refused.items()))
        return resumed
    guest = Guest(features=saved.features, identity_cap=cap)
    resumed.reads = _run_pass(session, guest, payload, 2, timeout)
    resumed.run_error, resumed.exits = guest.run_error, guest.exits
    return resumed


def register_name(reg_id: int) -> str:
    """A one-reg id by its catalog name where it is an ID register, else in hex."""
    for reg in catalog.registers().values():
        if catalog.sysreg_id(*reg.encoding) == reg_id:
            return reg.name
    return f"{reg_id:#018x}"
