"""The one pool pipeline: combine the members' views, apply the user's settings, check every member
against the result, render it for the VMM. The CLI's ``baseline`` and the operator's reconcile both
call :func:`plan_pool`, so a model planned on a laptop is the model the operator computes.

Also the one place that knows what a Linux 6.18-era KVM lets userspace write, for planning on
register dumps that carry no masks (:func:`assume_kvm`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from armcpu import catalog, kvm, render
from armcpu.model import Applied, CanRun, CombineResult, Model, apply, can_run_each, combine
from armcpu.named_models import NamedModel
from armcpu.profile import Profile


@dataclass(frozen=True)
class PoolPlan:
    combined: CombineResult  # the fold, with the blockers that make the pool infeasible
    applied: Applied  # the fold after the settings (the model to use, when ``feasible``)
    checks: Mapping[str, CanRun]  # each member against ``model``
    qemu: render.Rendering  # QEMU's -cpu / -machine properties (the SYSREG series)
    libvirt: render.Rendering  # what libvirt can express today (sve / pauth disables)

    @property
    def model(self) -> Model:
        return self.applied.model

    @property
    def feasible(self) -> bool:
        return self.combined.feasible


def plan_pool(profiles: Sequence[Profile], *, identity_from: str | None = None, base: NamedModel | None = None,
              feature_settings: Mapping[str, str] | None = None, register_settings: Mapping[str, int] | None = None) -> PoolPlan:
    """combine → apply → can_run → render. Raises :class:`armcpu.model.SettingError` for a setting the
    pool cannot honour and ``ValueError`` for an ``identity_from`` that is not a member."""
    combined = combine(profiles, identity_from=identity_from)
    applied = apply(combined.model, base=base.as_model() if base else None, base_covered=base.covered if base else None,
                    feature_settings=dict(feature_settings or {}), register_settings=dict(register_settings or {}), pool=profiles)
    model = applied.model
    hosts = list({tuple(sorted(p.registers.items())): p for p in profiles}.values())  # the renderers read registers only
    return PoolPlan(combined=combined, applied=applied, checks=can_run_each(profiles, model),
                    qemu=render.QemuSysregV9().render(model, hosts), libvirt=render.LibvirtToday().render(model, hosts))


def assume_kvm(profile: Profile) -> Profile:
    """A profile without masks given the writable masks of a Linux 6.18-era KVM (planning only: a
    node's agent publishes the masks its own kernel reports)."""
    if profile.writable is not None:
        return profile
    el0 = catalog.field("ID_AA64PFR0_EL1", "EL0").extract(profile.value("ID_AA64PFR0_EL1"))
    return replace(profile, writable=kvm.assumed_writable_masks(aarch32_el0=el0 >= 2), kvm=replace(profile.kvm, writable_imp_id_regs=True))
