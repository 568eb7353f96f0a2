"""The KVM probe: what a guest vCPU actually sees, and what KVM lets userspace change.

It does what QEMU's scratch vCPU does: open /dev/kvm, create a VM (largest IPA size the host
offers) and one vCPU with the features KubeVirt's QEMU enables (PSCI 0.2, PMUv3, SVE, pointer
authentication — each only when KVM offers it), read every catalogued ID register with
KVM_GET_ONE_REG and, where the kernel supports it, the writable masks with
KVM_ARM_GET_REG_WRITABLE_MASKS. Nothing is ever run or written.

Pure Python: ``fcntl.ioctl`` on ctypes structs. The system calls go through the small
:class:`IoctlBackend` interface so that tests replay a recorded conversation byte for byte.

Request numbers, checked against the uapi headers (include/uapi/linux/kvm.h and
arch/arm64/include/uapi/asm/kvm.h); _IOC(dir, type, nr, size) = dir<<30 | size<<16 | type<<8 | nr,
KVMIO = 0xAE, dir write = 1, read = 2:

=============================== ======================================== ============
request                         definition                               value
=============================== ======================================== ============
KVM_GET_API_VERSION             _IO(KVMIO, 0x00)                         0x0000AE00
KVM_CREATE_VM                   _IO(KVMIO, 0x01)                         0x0000AE01
KVM_CHECK_EXTENSION             _IO(KVMIO, 0x03)                         0x0000AE03
KVM_CREATE_VCPU                 _IO(KVMIO, 0x41)                         0x0000AE41
KVM_GET_ONE_REG                 _IOW(KVMIO, 0xab, struct kvm_one_reg)    0x4010AEAB
KVM_ARM_VCPU_INIT               _IOW(KVMIO, 0xae, struct kvm_vcpu_init)  0x4020AEAE
KVM_ARM_PREFERRED_TARGET        _IOR(KVMIO, 0xaf, struct kvm_vcpu_init)  0x8020AEAF
KVM_ARM_GET_REG_WRITABLE_MASKS  _IOR(KVMIO, 0xb6, struct reg_mask_range) 0x8040AEB6
KVM_ARM_VCPU_FINALIZE           _IOW(KVMIO, 0xc2, int)                   0x4004AEC2
=============================== ======================================== ============

Structs: kvm_one_reg {u64 id; u64 addr} (16 bytes); kvm_vcpu_init {u32 target; u32 features[7]}
(32 bytes); reg_mask_range {u64 addr; u32 range; u32 reserved[13]} (64 bytes, addr -> u64[192]).
Capabilities: KVM_CAP_ARM_PSCI_0_2 102, KVM_CAP_ARM_PMU_V3 126, KVM_CAP_ARM_VM_IPA_SIZE 165,
KVM_CAP_ARM_SVE 170, KVM_CAP_ARM_PTRAUTH_ADDRESS 171, KVM_CAP_ARM_PTRAUTH_GENERIC 172,
KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES 230, KVM_CAP_ARM_WRITABLE_IMP_ID_REGS 239.
vCPU feature bits: PSCI_0_2 2, PMU_V3 3, SVE 4, PTRAUTH_ADDRESS 5, PTRAUTH_GENERIC 6.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from armcpu import catalog
from armcpu.catalog import Register
from node_agent.probes import ProbeError, ProbeUnavailable

KVMIO = 0xAE
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


class KvmOneReg(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("addr", ctypes.c_uint64)]


class KvmVcpuInit(ctypes.Structure):
    _fields_ = [("target", ctypes.c_uint32), ("features", ctypes.c_uint32 * 7)]


class RegMaskRange(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("range", ctypes.c_uint32), ("reserved", ctypes.c_uint32 * 13)]


FEATURE_ID_RANGE_SIZE = 3 * 8 * 8  # KVM_ARM_FEATURE_ID_RANGE_SIZE

KVM_GET_API_VERSION = _ioc(0, 0x00, 0)
KVM_CREATE_VM = _ioc(0, 0x01, 0)
KVM_CHECK_EXTENSION = _ioc(0, 0x03, 0)
KVM_CREATE_VCPU = _ioc(0, 0x41, 0)
KVM_GET_ONE_REG = _ioc(_IOC_WRITE, 0xAB, ctypes.sizeof(KvmOneReg))
KVM_ARM_VCPU_INIT = _ioc(_IOC_WRITE, 0xAE, ctypes.sizeof(KvmVcpuInit))
KVM_ARM_PREFERRED_TARGET = _ioc(_IOC_READ, 0xAF, ctypes.sizeof(KvmVcpuInit))
KVM_ARM_GET_REG_WRITABLE_MASKS = _ioc(_IOC_READ, 0xB6, ctypes.sizeof(RegMaskRange))
KVM_ARM_VCPU_FINALIZE = _ioc(_IOC_WRITE, 0xC2, ctypes.sizeof(ctypes.c_int))

KVM_API_VERSION = 12
CAP_ARM_PSCI_0_2 = 102
CAP_ARM_PMU_V3 = 126
CAP_ARM_VM_IPA_SIZE = 165
CAP_ARM_SVE = 170
CAP_ARM_PTRAUTH_ADDRESS = 171
CAP_ARM_PTRAUTH_GENERIC = 172
CAP_ARM_SUPPORTED_REG_MASK_RANGES = 230
CAP_ARM_WRITABLE_IMP_ID_REGS = 239

VCPU_PSCI_0_2, VCPU_PMU_V3, VCPU_SVE, VCPU_PTRAUTH_ADDRESS, VCPU_PTRAUTH_GENERIC = 2, 3, 4, 5, 6
VENDOR_HYP_BMAP_2 = 0x6030000000160003  # KVM_REG_ARM_VENDOR_HYP_BMAP_2 firmware pseudo-register

IoctlArg = int | ctypes.Structure | ctypes.c_int


class IoctlBackend(Protocol):
    """The three system calls the probe makes; :class:`LinuxIoctl` is the real one."""

    def open(self, path: Path) -> int: ...

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int: ...

    def close(self, fd: int) -> None: ...


class LinuxIoctl:
    def open(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int:
        if isinstance(arg, int):
            return int(fcntl.ioctl(fd, request, arg))
        return int(fcntl.ioctl(fd, request, arg, True))

    def close(self, fd: int) -> None:
        os.close(fd)


@dataclass(frozen=True)
class KvmResult:
    registers: dict[str, int]
    writable: dict[str, int] | None
    vcpu_features: tuple[str, ...]
    writable_imp_id_regs: bool
    reg_mask_ranges: bool
    vendor_hyp_bmap_2: int | None


def _call(io: IoctlBackend, fd: int, request: int, arg: IoctlArg, what: str) -> int:
    try:
        return io.ioctl(fd, request, arg)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise ProbeError(f"{what} (ioctl {request:#010x}) failed: {name} ({exc.strerror})") from None


def _get_one_reg(io: IoctlBackend, vcpu: int, reg_id: int, what: str) -> int | None:
    """A register's value, or None when KVM does not know the register (ENOENT)."""
    value = ctypes.c_uint64(0)
    one = KvmOneReg(id=reg_id, addr=ctypes.addressof(value))
    try:
        io.ioctl(vcpu, KVM_GET_ONE_REG, one)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise ProbeError(f"KVM_GET_ONE_REG {what} ({reg_id:#018x}) failed: {name} ({exc.strerror})") from None
    return value.value


def mask_index_to_register() -> dict[int, str]:
    out = {}
    for name, reg in catalog.registers().items():
        index = catalog.feature_id_range_index(*reg.encoding)
        if index is not None:
            out[index] = name
    return out


def probe(root: Path, io: IoctlBackend | None = None, regs: Iterable[Register] | None = None) -> KvmResult:
    """Read the guest view through ``<root>/dev/kvm``; ProbeUnavailable when it cannot be opened."""
    io = io or LinuxIoctl()
    device = root / "dev/kvm"
    try:
        sys_fd = io.open(device)
    except OSError as exc:
        raise ProbeUnavailable(f"cannot open {device}: {exc.strerror}") from None
    opened = [sys_fd]
    try:
        version = _call(io, sys_fd, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != KVM_API_VERSION:
            raise ProbeError(f"KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}")
        ipa_bits = _call(io, sys_fd, KVM_CHECK_EXTENSION, CAP_ARM_VM_IPA_SIZE, "KVM_CHECK_EXTENSION(ARM_VM_IPA_SIZE)")
        if not 0 <= ipa_bits <= 52:
            raise ProbeError(f"KVM_CHECK_EXTENSION(ARM_VM_IPA_SIZE) returned {ipa_bits}, not an IPA size")
        vm = _call(io, sys_fd, KVM_CREATE_VM, ipa_bits & 0xFF, "KVM_CREATE_VM")
        opened.append(vm)

        def cap(number: int, name: str) -> int:
            return _call(io, vm, KVM_CHECK_EXTENSION, number, f"KVM_CHECK_EXTENSION({name})")

        has_psci = cap(CAP_ARM_PSCI_0_2, "ARM_PSCI_0_2") > 0
        has_pmu = cap(CAP_ARM_PMU_V3, "ARM_PMU_V3") > 0
        has_sve = cap(CAP_ARM_SVE, "ARM_SVE") > 0
        has_ptrauth = cap(CAP_ARM_PTRAUTH_ADDRESS, "ARM_PTRAUTH_ADDRESS") > 0 and cap(CAP_ARM_PTRAUTH_GENERIC, "ARM_PTRAUTH_GENERIC") > 0
        mask_ranges = cap(CAP_ARM_SUPPORTED_REG_MASK_RANGES, "ARM_SUPPORTED_REG_MASK_RANGES")
        imp_id = cap(CAP_ARM_WRITABLE_IMP_ID_REGS, "ARM_WRITABLE_IMP_ID_REGS") > 0

        vcpu = _call(io, vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")
        opened.append(vcpu)
        init = KvmVcpuInit()
        _call(io, vm, KVM_ARM_PREFERRED_TARGET, init, "KVM_ARM_PREFERRED_TARGET")
        features: list[str] = []
        for wanted, bit, name in (
            (has_psci, VCPU_PSCI_0_2, "psci-0.2"),
            (has_pmu, VCPU_PMU_V3, "pmu-v3"),
            (has_sve, VCPU_SVE, "sve"),
            (has_ptrauth, VCPU_PTRAUTH_ADDRESS, "ptrauth-address"),
            (has_ptrauth, VCPU_PTRAUTH_GENERIC, "ptrauth-generic"),
        ):
            if wanted:
                init.features[bit // 32] |= 1 << (bit % 32)
                features.append(name)
        _call(io, vcpu, KVM_ARM_VCPU_INIT, init, "KVM_ARM_VCPU_INIT")
        if has_sve:
            # Registers cannot be read from an SVE vCPU before it is finalized (EPERM).
            _call(io, vcpu, KVM_ARM_VCPU_FINALIZE, ctypes.c_int(VCPU_SVE), "KVM_ARM_VCPU_FINALIZE(SVE)")

        registers: dict[str, int] = {}
        for reg in catalog.registers().values() if regs is None else regs:
            value = _get_one_reg(io, vcpu, catalog.sysreg_id(*reg.encoding), reg.name)
            if value is not None:
                registers[reg.name] = value
        if not registers:
            raise ProbeError("KVM_GET_ONE_REG knew none of the ID registers")

        writable = None
        if mask_ranges & 1:
            masks = (ctypes.c_uint64 * FEATURE_ID_RANGE_SIZE)()
            request = RegMaskRange(addr=ctypes.addressof(masks), range=0)
            _call(io, vm, KVM_ARM_GET_REG_WRITABLE_MASKS, request, "KVM_ARM_GET_REG_WRITABLE_MASKS")
            writable = {name: int(masks[index]) for index, name in mask_index_to_register().items() if name in registers}
        bmap2 = _get_one_reg(io, vcpu, VENDOR_HYP_BMAP_2, "KVM_REG_ARM_VENDOR_HYP_BMAP_2")
        return KvmResult(
            registers=registers,
            writable=writable,
            vcpu_features=tuple(features),
            writable_imp_id_regs=imp_id,
            reg_mask_ranges=bool(mask_ranges & 1),
            vendor_hyp_bmap_2=bmap2,
        )
    finally:
        for fd in reversed(opened):
            try:
                io.close(fd)
            except OSError:
                pass
