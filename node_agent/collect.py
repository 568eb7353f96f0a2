"""Run the probes in order of trust and assemble one profile for the node.

Order: KVM (the guest's view, plus writable masks), then MRS emulation (the host's sanitised
EL0 view), then sysfs alone (identity only). Per-core MIDR/REVIDR/AIDR, HWCAPs and the kernel
release always come from sysfs/procfs. The chosen probe is named in the profile.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from armcpu.profile import KvmInfo, Profile
from node_agent.probes import ProbeError, ProbeUnavailable, kvm_ioctl, kvm_session, kvm_verify, mrs, sysfs

log = logging.getLogger(__name__)
ARM64_MACHINES = frozenset({"aarch64", "arm64"})


class NotArm64(Exception):
    """The node is not arm64: the agent idles instead of crash-looping."""


@dataclass
class Sources:
    """Where the probes read from; tests replace the KVM ioctls and the MRS reader with recordings."""

    root: Path = Path("/")
    machine: str = "aarch64"
    kvm: kvm_ioctl.IoctlBackend | None = None
    mrs_reader: mrs.Reader | None = None
    # a session for the guest-view run (None: not measured, e.g. when replaying a probe recording)
    guest: Callable[[], kvm_session.KvmSession] | None = None
    skipped: list[str] = field(default_factory=list)


def collect(node_name: str, sources: Sources) -> Profile:
    """The node's profile; raises NotArm64, or ProbeError when no probe gave trustworthy data."""
    if sources.machine not in ARM64_MACHINES:
        raise NotArm64(f"machine is {sources.machine!r}, not arm64")
    root = sources.root
    try:
        cores = sysfs.read_cores(root)
    except ProbeUnavailable as exc:
        sources.skipped.append(f"sysfs: {exc}")
        cores = ()
    hwcaps = sysfs.read_hwcaps(root)
    kernel = sysfs.read_kernel(root)

    def profile(registers: dict[str, int], probe: str, source: str, writable: dict[str, int] | None = None,
                kvm: KvmInfo | None = None, guest_view: Mapping[str, int] | None = None) -> Profile:
        return Profile(name=node_name, registers=registers, writable=writable, cores=cores, probe=probe,
                       kernel=kernel, source=source, hwcaps=hwcaps, kvm=kvm or KvmInfo(), guest_view=guest_view)

    try:
        result = kvm_ioctl.probe(root, sources.kvm)
    except ProbeUnavailable as exc:
        sources.skipped.append(f"kvm: {exc}")
    else:
        return profile(
            result.registers,
            "kvm",
            "KVM_GET_ONE_REG of a scratch vCPU",
            writable=result.writable,
            kvm=KvmInfo(
                vcpu_features=result.vcpu_features,
                writable_imp_id_regs=result.writable_imp_id_regs,
                reg_mask_ranges=result.reg_mask_ranges,
                vendor_hyp_bmap_2=result.vendor_hyp_bmap_2,
            ),
            guest_view=None if sources.guest is None else guest_view(result.registers, sources.guest(), sources.skipped),
        )

    if "cpuid" in hwcaps and sources.mrs_reader is None and platform.machine() not in ARM64_MACHINES:
        sources.skipped.append(f"mrs: cannot execute arm64 instructions on {platform.machine()}")
    elif "cpuid" in hwcaps:
        reader = sources.mrs_reader or mrs.NativeMrs(mrs.registers_to_read())
        try:
            registers = mrs.read_all(reader)
        except (OSError, KeyError) as exc:
            raise ProbeError(f"mrs: {exc}") from None
        return profile(registers, "mrs", "EL0 MRS emulation (host sanitised view)")
    else:
        sources.skipped.append("mrs: HWCAP_CPUID ('cpuid') not in /proc/cpuinfo Features")

    if not cores:
        raise ProbeError("; ".join(["no probe could read this CPU", *sources.skipped]))
    first = cores[0]
    registers = {"MIDR_EL1": first.midr, "REVIDR_EL1": first.revidr}
    return profile(registers, "sysfs", "sysfs identification registers only")


def guest_view(registers: Mapping[str, int], session: kvm_session.KvmSession, skipped: list[str]) -> dict[str, int] | None:
    """What a guest started with the node's own view reads where that differs from what KVM showed
    userspace (usually nothing). Why: KVM passes some registers through untrapped when the VM's value
    equals the host's (CTR_EL0: the guest then reads the physical register, e.g. an MTE CPU's
    TminLine the sanitised view hides), and some KVM never shows userspace at all (DCZID_EL0); only a
    guest sees them. None when the run failed (named in ``skipped``)."""
    try:
        guest = kvm_verify.start(session, dict(registers), registers)
    except (ProbeError, OSError) as exc:
        skipped.append(f"guest view: {exc}")
        return None
    finally:
        try:
            session.close()
        except OSError:
            pass
    if guest.reads is None:
        skipped.append(f"guest view: {guest.run_error}")
        return None
    return {name: value for name, value in guest.reads.items() if value != registers.get(name, 0)}
