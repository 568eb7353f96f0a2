"""Simulated arm64 hosts for tests and the demo: a host tree (sysfs/procfs files) and a KVM ioctl
conversation the agent replays, both built from a CPU's recorded register values.

The request numbers and struct layouts here are written out from the uapi headers on their own
(not imported from the probe), so a wrong constant in the probe makes the replay refuse it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

from armcpu import catalog, kvm, profile
from armcpu_testing.controlplane import CPUS

# uapi: _IOC(dir, 0xAE, nr, size)
GET_API_VERSION = 0x0000AE00
CREATE_VM = 0x0000AE01
CHECK_EXTENSION = 0x0000AE03
VENDOR_HYP_BMAP_2 = 0x6030000000160003  # KVM_REG_ARM_FW | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW_FEAT_BMAP | 3
CREATE_VCPU = 0x0000AE41
VCPU_INIT = 0x4020AEAE  # _IOW(0xae, struct kvm_vcpu_init: 32 bytes)
PREFERRED_TARGET = 0x8020AEAF  # _IOR(0xaf, struct kvm_vcpu_init)
VCPU_FINALIZE = 0x4004AEC2  # _IOW(0xc2, int)
TARGET_GENERIC_V8 = 5  # KVM_ARM_TARGET_GENERIC_V8

CAPS = [(102, "ARM_PSCI_0_2"), (126, "ARM_PMU_V3"), (170, "ARM_SVE"), (171, "ARM_PTRAUTH_ADDRESS"),
        (172, "ARM_PTRAUTH_GENERIC"), (230, "ARM_SUPPORTED_REG_MASK_RANGES"), (239, "ARM_WRITABLE_IMP_ID_REGS")]


def registers_of(cpu: dict[str, Any]) -> dict[str, int]:
    """Register values of a shared CPU file, parsed the way the CLI parses them (MIDR from "midr" if needed)."""
    parsed = profile.from_dict(cpu, str(cpu.get("name", "cpu")))
    regs = dict(parsed.registers)
    regs.setdefault("MIDR_EL1", parsed.midr)
    return regs


def conversation(registers: dict[str, int], masks: dict[str, int] | None, *, sve: bool = False, ptrauth: bool = False,
                 imp_id: bool = True, ipa_bits: int = 48, source: str = "", vendor_hyp_bmap_2: int | None = None) -> dict[str, Any]:
    """The ioctls a scratch-vCPU probe makes on a host with these answers, in order."""
    caps = {102: 1, 126: 1, 170: int(sve), 171: int(ptrauth), 172: int(ptrauth), 230: 1 if masks is not None else 0, 239: int(imp_id)}
    calls: list[dict[str, Any]] = [
        {"fd": "kvm", "request": f"{GET_API_VERSION:#010x}", "name": "KVM_GET_API_VERSION", "arg": 0, "ret": 12},
        {"fd": "kvm", "request": f"{CHECK_EXTENSION:#010x}", "name": "KVM_CHECK_EXTENSION(ARM_VM_IPA_SIZE)", "arg": 165, "ret": ipa_bits},
        {"fd": "kvm", "request": f"{CREATE_VM:#010x}", "name": "KVM_CREATE_VM", "arg": ipa_bits, "ret": "vm"},
    ]
    for number, name in CAPS:
        if name == "ARM_PTRAUTH_GENERIC" and not caps[171]:
            continue  # the probe asks for GENERIC only when ADDRESS is there
        calls.append({"fd": "vm", "request": f"{CHECK_EXTENSION:#010x}", "name": f"KVM_CHECK_EXTENSION({name})", "arg": number, "ret": caps[number]})
    calls.append({"fd": "vm", "request": f"{CREATE_VCPU:#010x}", "name": "KVM_CREATE_VCPU", "arg": 0, "ret": "vcpu"})
    calls.append({"fd": "vm", "request": f"{PREFERRED_TARGET:#010x}", "name": "KVM_ARM_PREFERRED_TARGET",
                  "in": struct.pack("<8I", *[0] * 8).hex(), "out": struct.pack("<8I", TARGET_GENERIC_V8, *[0] * 7).hex(), "ret": 0})
    bits = 1 << 2 | 1 << 3 | (1 << 4 if sve else 0) | ((1 << 5 | 1 << 6) if ptrauth else 0)
    init = struct.pack("<8I", TARGET_GENERIC_V8, bits, *[0] * 6).hex()
    calls.append({"fd": "vcpu", "request": f"{VCPU_INIT:#010x}", "name": "KVM_ARM_VCPU_INIT", "in": init, "out": init, "ret": 0})
    if sve:
        calls.append({"fd": "vcpu", "request": f"{VCPU_FINALIZE:#010x}", "name": "KVM_ARM_VCPU_FINALIZE(SVE)",
                      "in": struct.pack("<i", 4).hex(), "out": struct.pack("<i", 4).hex(), "ret": 0})
    one_reg = {}
    for name, value in registers.items():
        reg = catalog.register(name)
        one_reg[f"{catalog.sysreg_id(*reg.encoding):#018x}"] = f"{value:#018x}"
    if vendor_hyp_bmap_2 is not None:  # the firmware pseudo-register of Linux 6.16+
        one_reg[f"{VENDOR_HYP_BMAP_2:#018x}"] = f"{vendor_hyp_bmap_2:#018x}"
    out: dict[str, Any] = {"source": source, "calls": calls, "one_reg": one_reg}
    if masks is not None:
        table = {}
        for name, mask in masks.items():
            index = catalog.feature_id_range_index(*catalog.register(name).encoding)
            if index is not None and mask:
                table[str(index)] = f"{mask:#018x}"
        out["writable_masks"] = table
    return out


def write_host_tree(root: Path, cpu: dict[str, Any], ncpus: int = 4, kernel: str = "6.18.30",
                    cores: list[tuple[int, int, list[int]]] | None = None) -> None:
    """A fake host root: per-CPU identification registers, /proc/cpuinfo Features, osrelease."""
    regs = registers_of(cpu)
    groups = cores or [(regs["MIDR_EL1"], regs.get("REVIDR_EL1", 0), list(range(ncpus)))]
    for midr, revidr, numbers in groups:
        for n in numbers:
            ident = root / f"sys/devices/system/cpu/cpu{n}/regs/identification"
            ident.mkdir(parents=True, exist_ok=True)
            (ident / "midr_el1").write_text(f"0x{midr:016x}\n")
            (ident / "revidr_el1").write_text(f"0x{revidr:016x}\n")
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/osrelease").write_text(kernel + "\n")
    hwcaps = cpu.get("cpuinfo_features", [])
    features = " ".join(hwcaps) if isinstance(hwcaps, list) else str(hwcaps)
    (root / "proc/cpuinfo").write_text(
        "".join(f"processor\t: {n}\nBogoMIPS\t: 2000.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n\n" for n in range(ncpus))
    )


def simulated_host(root: Path, cpu: dict[str, Any], *, aarch32_el0: bool = True, ncpus: int = 2,
                   kernel: str = "6.18.30", masks: bool = True) -> Path:
    """Write a host tree under ``root`` and its KVM conversation; returns the conversation's path.
    ``masks=False`` simulates a kernel without KVM_ARM_GET_REG_WRITABLE_MASKS (before 6.7)."""
    write_host_tree(root, cpu, ncpus=ncpus, kernel=kernel)
    conv = conversation(registers_of(cpu), kvm.assumed_writable_masks(aarch32_el0) if masks else None,
                        imp_id=masks, source=str(cpu.get("name", "")))
    path = root / "kvm-conversation.json"
    path.write_text(json.dumps(conv))
    return path


def host_618_profile(cpu_file: str) -> profile.Profile:
    """A recorded CPU (a file under ../shared/cpus) as a Linux 6.18 host's agent publishes it: the
    6.18 writable masks and writable MIDR/REVIDR/AIDR (cap 239), probed through KVM."""
    parsed = profile.from_dict(json.loads((CPUS / cpu_file).read_text()), cpu_file)
    return replace(parsed, writable=kvm.assumed_writable_masks(True), probe="kvm", kvm=profile.KvmInfo(writable_imp_id_regs=True))
