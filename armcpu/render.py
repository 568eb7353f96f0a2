"""Rendering a model for a hypervisor stack, behind one small interface versioned by target.

A change of spelling upstream (named KVM models, lower-case properties) is a new ``Renderer``
here; nothing else in armcpu knows how QEMU or libvirt spell things.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from armcpu import catalog, kvm
from armcpu.catalog import RegisterKind
from armcpu.model import Model
from armcpu.profile import Profile


@dataclass(frozen=True)
class Rendering:
    target: str
    cpu_properties: tuple[str, ...]  # e.g. ("pauth=off", "SYSREG_ID_AA64ISAR0_EL1_SM3=0")
    machine_properties: tuple[str, ...] = ()  # e.g. impl-cpu.N.* target implementations
    libvirt_disabled: tuple[str, ...] = ()  # libvirt <feature policy='disable' name=.../>

    @property
    def cpu_arg(self) -> str:
        return ",".join(("host", *self.cpu_properties))


class Renderer(Protocol):
    target: str

    def render(self, model: Model, hosts: Sequence[Profile]) -> Rendering: ...


def _off_groups(model: Model, hosts: Sequence[Profile]) -> list[str]:
    """vCPU features (pauth, sve, pmu) the model switches off where some host has them."""
    return [
        group
        for group in kvm.VCPU_FEATURE_FIELDS
        if kvm.vcpu_group_is_off(model.value, group)
        and not all(kvm.vcpu_group_is_off(h.value, group) for h in hosts)
    ]


class QemuSysregV9:
    """QEMU's customizable KVM host model, SYSREG property series v9 (Sep 2026, not yet merged):
    ``-cpu host,SYSREG_<REG>_<FIELD>=<value>`` with Linux sysreg spelling; legacy ``pauth=off`` /
    ``sve=off`` for fields set by vCPU features; target implementations as
    ``-M virt,impl-cpu.N.midr=...,impl-cpu.N.revidr=...,impl-cpu.N.aidr=...`` (Shameer's RFC).
    Values are absolute and the same for every host of the pool."""

    target = "qemu-sysreg-v9"

    def render(self, model: Model, hosts: Sequence[Profile]) -> Rendering:
        off = _off_groups(model, hosts)
        # QEMU's SYSREG series (v10) hides the properties of fields a legacy composite option owns
        # (sve*, pauth, pmu): only the switch is ever emitted for them, never a SYSREG_ field. A group
        # that is neither off nor equal on every host cannot be rendered; combine reports it as a blocker.
        skip = {pair for pairs in kvm.VCPU_FEATURE_FIELDS.values() for pair in pairs}
        props = [f"{g}=off" for g in off]
        for reg in catalog.registers().values():
            if reg.kind is RegisterKind.IDENTITY or reg.name not in model.registers:
                continue
            mv = model.value(reg.name)
            for fld in reg.fields:
                if (reg.name, fld.name) in skip:
                    continue
                want = fld.extract(mv)
                if any(fld.extract(h.value(reg.name)) != want for h in hosts):
                    props.append(f"SYSREG_{reg.name}_{fld.name}={want}")
        machine: list[str] = []
        if len(model.targets) > 1:
            for i, core in enumerate(model.targets):
                machine += [
                    f"impl-cpu.{i}.midr={core.midr:#x}",
                    f"impl-cpu.{i}.revidr={core.revidr:#x}",
                    f"impl-cpu.{i}.aidr={core.aidr:#x}",
                ]
        return Rendering(self.target, tuple(props), tuple(machine), tuple(_libvirt(off)))


def _libvirt(off: Sequence[str]) -> list[str]:
    return [g for g in off if g in kvm.LIBVIRT_GROUPS]


class LibvirtToday:
    """What libvirt's aarch64 driver can express today: only ``sve`` and ``pauth`` disable."""

    target = "libvirt-features"

    def render(self, model: Model, hosts: Sequence[Profile]) -> Rendering:
        off = _libvirt(_off_groups(model, hosts))
        return Rendering(self.target, tuple(f"{g}=off" for g in off), (), tuple(off))


RENDERERS: dict[str, Renderer] = {r.target: r for r in (QemuSysregV9(), LibvirtToday())}
DEFAULT_TARGET = QemuSysregV9.target
