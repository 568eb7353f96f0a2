"""Whether a running guest can move from one node to another: the destination's KVM must take what the
guest carries, and the guest must read there what it read before.

Why this is not just ``can_run(destination, model)``: a moving guest carries every vCPU register
(``KVM_GET_REG_LIST``), not only the ID registers, and what it saw on the source may differ from the
model where KVM passes a register through untrapped (the node's ``guest_view``). Both were measured
on real kernels (docs/truth.md: the guest moves of the truth matrix).
"""

from __future__ import annotations

from dataclasses import replace

from armcpu import catalog
from armcpu.model import CanRun, Model, Refusal, can_run
from armcpu.profile import Profile


def kernel_series(release: str | None) -> str | None:
    """``7.3.4+deb13-arm64`` -> ``7.3``: the vCPU register list changes between kernel series."""
    if not release:
        return None
    parts = release.split("+")[0].split("-")[0].split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else None


def presented(node: Profile, model: Model) -> dict[str, int]:
    """What a guest started with ``model`` reads on ``node``: the model, except registers the model
    leaves at the node's own value where the node's guest view says the guest reads another value."""
    seen = dict(model.registers)
    for name, value in (node.guest_view or {}).items():
        if name in model.registers and model.registers[name] == node.value(name):
            seen[name] = value
    return seen


def can_move(source: Profile, destination: Profile, model: Model) -> CanRun:
    """Whether a guest started with ``model`` on ``source`` can be restored on ``destination`` and read
    the same registers there.

    - The destination's KVM must accept the model's writes (``can_run``, without its guest-view rule:
      a move needs equal guest views, not a guest view equal to the model).
    - Both nodes must run the same kernel series: the vCPU register lists of Linux 6.12 and 7.3
      differ (TCR2_EL1, PIRE0_EL1, PIR_EL1, KVM_REG_ARM_VENDOR_HYP_BMAP_2, the PSCI version), and
      restoring one on the other was refused in both directions, by the verifier's restore and by
      stock QEMU alike ("Failed to load cpu:cpreg_vmstate_array_len").
    - The guest must read on the destination what it read on the source (``presented``).
    """
    refusals: list[Refusal] = []
    a, b = kernel_series(source.kernel), kernel_series(destination.kernel)
    if a is None or b is None or a != b:
        refusals.append(Refusal("*", "register list", 0, 0, (), None,
                                f"Linux {source.kernel or '?'} and {destination.kernel or '?'} list different vCPU registers: "
                                "a guest moves only between nodes of one kernel series (measured: 6.12 <-> 7.3 refused both ways)"))
    writes = can_run(replace(destination, guest_view=None), model)
    refusals += writes.refusals
    before, after = presented(source, model), presented(destination, model)
    for name in sorted(set(before) | set(after)):
        x, y = before.get(name, 0), after.get(name, 0)
        if x == y or name not in catalog.registers():
            continue
        for fld in catalog.register(name).fields:
            if fld.extract(x) != fld.extract(y):
                refusals.append(Refusal(name, fld.name, fld.extract(y), fld.extract(x), (), None,
                                        "the guest would read this field differently after the move (guest views differ)"))
    return CanRun(ok=not refusals, refusals=tuple(refusals), warnings=writes.warnings)


def stock_destination(profile: Profile) -> Profile:
    """A node as stock QEMU uses it: QEMU never enables KVM_CAP_ARM_WRITABLE_IMP_ID_REGS."""
    return replace(profile, kvm=replace(profile.kvm, writable_imp_id_regs=False))
