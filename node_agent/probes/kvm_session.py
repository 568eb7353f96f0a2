"""The KVM calls the verifier makes, one typed method each, with a real, a recording and a replaying side.

Why a second interface beside the probe's :class:`~node_agent.probes.kvm_ioctl.IoctlBackend`: the
verifier writes registers, maps guest memory and runs a vCPU, and its structs carry pointers into
this process. Recording at the level of these calls ("set_reg 0x6030…c020 = 0x…: EINVAL", "run:
MMIO exit at 0xa000000") makes a conversation that reads like what happened and replays on any
machine, byte for byte, in the same order. :class:`LinuxKvm` is the real one: ``ioctl(2)`` through
libc (so that pointers are passed as they are), ``mmap(2)`` for the vCPU's run structure and the
guest's memory. Standard library only, like the probe.

Request numbers (uapi ``linux/kvm.h``; ``_IOC(dir, 0xAE, nr, size)``, write = 1, read = 2):

============================ ================================================ ==========
request                      definition                                       value
============================ ================================================ ==========
KVM_GET_VCPU_MMAP_SIZE       _IO(KVMIO, 0x04)                                 0x0000AE04
KVM_SET_USER_MEMORY_REGION   _IOW(KVMIO, 0x46, kvm_userspace_memory_region)   0x4020AE46
KVM_RUN                      _IO(KVMIO, 0x80)                                 0x0000AE80
KVM_ENABLE_CAP               _IOW(KVMIO, 0xa3, struct kvm_enable_cap)         0x4068AEA3
KVM_SET_ONE_REG              _IOW(KVMIO, 0xac, struct kvm_one_reg)            0x4010AEAC
KVM_GET_REG_LIST             _IOWR(KVMIO, 0xb0, struct kvm_reg_list)          0xC008AEB0
KVM_CREATE_DEVICE            _IOWR(KVMIO, 0xe0, struct kvm_create_device)     0xC00CAEE0
KVM_SET_DEVICE_ATTR          _IOW(KVMIO, 0xe1, struct kvm_device_attr)        0x4018AEE1
============================ ================================================ ==========

``struct kvm_run``: ``immediate_exit`` at byte 1, ``exit_reason`` (u32) at 8, and for
``KVM_EXIT_MMIO`` (6) ``phys_addr`` (u64) at 32, ``data[8]`` at 40, ``len`` (u32) at 48,
``is_write`` (u8) at 52.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_agent.probes import ProbeError
from node_agent.probes.kvm_ioctl import (
    KVM_ARM_PREFERRED_TARGET,
    KVM_ARM_VCPU_FINALIZE,
    KVM_ARM_VCPU_INIT,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_GET_ONE_REG,
    KvmVcpuInit,
    _ioc,
)

KVM_GET_VCPU_MMAP_SIZE = _ioc(0, 0x04, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(1, 0x46, 32)
KVM_RUN = _ioc(0, 0x80, 0)
KVM_ENABLE_CAP = _ioc(1, 0xA3, 104)
KVM_SET_ONE_REG = _ioc(1, 0xAC, 16)
KVM_GET_REG_LIST = _ioc(3, 0xB0, 8)
KVM_CREATE_DEVICE = _ioc(3, 0xE0, 12)
KVM_SET_DEVICE_ATTR = _ioc(1, 0xE1, 24)

KVM_DEV_TYPE_ARM_VGIC_V3 = 7
VGIC_GRP_ADDR, VGIC_GRP_CTRL = 0, 4
VGIC_V3_ADDR_TYPE_DIST, VGIC_V3_ADDR_TYPE_REDIST = 2, 3
VGIC_CTRL_INIT = 0
PMU_V3_CTRL, PMU_V3_IRQ, PMU_V3_INIT = 0, 0, 1
KVM_EXIT_MMIO = 6
EXIT_NAMES = {0: "UNKNOWN", 2: "IO", 6: "MMIO", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT",
              28: "ARM_NISV", 39: "MEMORY_FAULT"}


@dataclass(frozen=True)
class Exit:
    """Why ``KVM_RUN`` returned: the exit reason and, for an MMIO exit, the access."""

    reason: int
    mmio_address: int = 0
    mmio_data: int = 0
    mmio_write: bool = False

    def describe(self) -> str:
        name = EXIT_NAMES.get(self.reason, str(self.reason))
        if self.reason == KVM_EXIT_MMIO:
            return f"MMIO {'write' if self.mmio_write else 'read'} at {self.mmio_address:#x} (data {self.mmio_data:#x})"
        return f"exit {name}"


def reg_size(reg_id: int) -> int:
    """Bytes of a one-reg value: ``KVM_REG_SIZE_MASK`` (bits 55:52) holds log2 of the size."""
    return 1 << ((reg_id >> 52) & 0xF)


class KvmSession:
    """The calls, each raising :class:`OSError` with KVM's errno when KVM refuses. Subclasses
    either do them (:class:`LinuxKvm`) or record or replay them."""

    def open(self) -> None:
        self._call("open")

    def api_version(self) -> int:
        return int(self._call("api_version"))

    def check_extension(self, cap: int, on_vm: bool = True) -> int:
        return int(self._call("check_extension", cap, on_vm))

    def create_vm(self, ipa_bits: int) -> None:
        self._call("create_vm", ipa_bits)

    def enable_cap(self, cap: int) -> None:
        self._call("enable_cap", cap)

    def create_vcpu(self) -> None:
        self._call("create_vcpu")

    def preferred_target(self) -> int:
        return int(self._call("preferred_target"))

    def vcpu_init(self, target: int, feature_bits: Sequence[int]) -> None:
        self._call("vcpu_init", target, list(feature_bits))

    def finalize(self, feature_bit: int) -> None:
        self._call("finalize", feature_bit)

    def create_vgic_v3(self, distributor: int, redistributor: int) -> None:
        self._call("create_vgic_v3", distributor, redistributor)

    def init_vgic(self) -> None:
        self._call("init_vgic")

    def init_pmu(self, irq: int) -> None:
        self._call("init_pmu", irq)

    def get_reg(self, reg_id: int) -> bytes:
        return bytes(self._call("get_reg", reg_id))

    def set_reg(self, reg_id: int, value: bytes) -> None:
        self._call("set_reg", reg_id, value)

    def reg_list(self) -> list[int]:
        return [int(r) for r in self._call("reg_list")]

    def add_memory(self, guest_address: int, size: int) -> None:
        self._call("add_memory", guest_address, size)

    def write_memory(self, offset: int, data: bytes) -> None:
        self._call("write_memory", offset, data)

    def read_memory(self, offset: int, length: int) -> bytes:
        return bytes(self._call("read_memory", offset, length))

    def run(self, immediate_exit: bool = False, timeout: float = 30.0) -> Exit:
        raw = self._call("run", immediate_exit, timeout)
        return raw if isinstance(raw, Exit) else Exit(**raw)

    def close(self) -> None:
        self._call("close")

    def _call(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    def get_u64(self, reg_id: int) -> int:
        return int.from_bytes(self.get_reg(reg_id), "little")

    def set_u64(self, reg_id: int, value: int) -> None:
        self.set_reg(reg_id, value.to_bytes(reg_size(reg_id), "little"))


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.ioctl = libc.ioctl
        self.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        self.ioctl.restype = ctypes.c_int


class LinuxKvm(KvmSession):
    """The real calls on ``<root>/dev/kvm``."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.device = root / "dev/kvm"
        self.fds: dict[str, int] = {}
        self.run_area: mmap.mmap | None = None
        self.memory: mmap.mmap | None = None
        self._memory_pointer: ctypes.c_char | None = None
        self._libc: _Libc | None = None

    def _ioctl(self, fd_name: str, request: int, arg: int | ctypes.Structure | ctypes.Array[Any] | ctypes.c_int | None = None) -> int:
        if self._libc is None:
            self._libc = _Libc()
        pointer = arg if isinstance(arg, int) or arg is None else ctypes.addressof(arg)
        ret = int(self._libc.ioctl(self.fds[fd_name], request, pointer))
        if ret < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return ret

    def _call(self, name: str, *args: Any) -> Any:
        return getattr(self, f"_do_{name}")(*args)

    def _do_open(self) -> None:
        self.fds["kvm"] = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)

    def _do_api_version(self) -> int:
        return self._ioctl("kvm", KVM_GET_API_VERSION, 0)

    def _do_check_extension(self, cap: int, on_vm: bool) -> int:
        return self._ioctl("vm" if on_vm else "kvm", KVM_CHECK_EXTENSION, cap)

    def _do_create_vm(self, ipa_bits: int) -> None:
        self.fds["vm"] = self._ioctl("kvm", KVM_CREATE_VM, ipa_bits & 0xFF)

    def _do_enable_cap(self, cap: int) -> None:
        raw = (ctypes.c_uint8 * 104)()
        struct.pack_into("<II", raw, 0, cap, 0)
        self._ioctl("vm", KVM_ENABLE_CAP, raw)

    def _do_create_vcpu(self) -> None:
        self.fds["vcpu"] = self._ioctl("vm", KVM_CREATE_VCPU, 0)
        size = self._ioctl("kvm", KVM_GET_VCPU_MMAP_SIZE, 0)
        self.run_area = mmap.mmap(self.fds["vcpu"], size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def _do_preferred_target(self) -> int:
        init = KvmVcpuInit()
        self._ioctl("vm", KVM_ARM_PREFERRED_TARGET, init)
        return int(init.target)

    def _do_vcpu_init(self, target: int, feature_bits: list[int]) -> None:
        init = KvmVcpuInit(target=target)
        for bit in feature_bits:
            init.features[bit // 32] |= 1 << (bit % 32)
        self._ioctl("vcpu", KVM_ARM_VCPU_INIT, init)

    def _do_finalize(self, feature_bit: int) -> None:
        self._ioctl("vcpu", KVM_ARM_VCPU_FINALIZE, ctypes.c_int(feature_bit))

    def _device_attr(self, fd_name: str, group: int, attr: int, value: ctypes.c_uint64 | ctypes.c_int | None) -> None:
        raw = (ctypes.c_uint8 * 24)()
        struct.pack_into("<IIQQ", raw, 0, 0, group, attr, 0 if value is None else ctypes.addressof(value))
        self._ioctl(fd_name, KVM_SET_DEVICE_ATTR, raw)

    def _do_create_vgic_v3(self, distributor: int, redistributor: int) -> None:
        raw = (ctypes.c_uint8 * 12)()
        struct.pack_into("<III", raw, 0, KVM_DEV_TYPE_ARM_VGIC_V3, 0, 0)
        self._ioctl("vm", KVM_CREATE_DEVICE, raw)
        self.fds["vgic"] = struct.unpack_from("<I", bytes(raw), 4)[0]
        self._device_attr("vgic", VGIC_GRP_ADDR, VGIC_V3_ADDR_TYPE_DIST, ctypes.c_uint64(distributor))
        self._device_attr("vgic", VGIC_GRP_ADDR, VGIC_V3_ADDR_TYPE_REDIST, ctypes.c_uint64(redistributor))

    def _do_init_vgic(self) -> None:
        self._device_attr("vgic", VGIC_GRP_CTRL, VGIC_CTRL_INIT, None)

    def _do_init_pmu(self, irq: int) -> None:
        self._device_attr("vcpu", PMU_V3_CTRL, PMU_V3_IRQ, ctypes.c_int(irq))
        self._device_attr("vcpu", PMU_V3_CTRL, PMU_V3_INIT, None)

    def _do_get_reg(self, reg_id: int) -> bytes:
        value = (ctypes.c_uint8 * reg_size(reg_id))()
        one = (ctypes.c_uint64 * 2)(reg_id, ctypes.addressof(value))
        self._ioctl("vcpu", KVM_GET_ONE_REG, one)
        return bytes(value)

    def _do_set_reg(self, reg_id: int, value: bytes) -> None:
        if len(value) != reg_size(reg_id):
            raise ProbeError(f"register {reg_id:#x} takes {reg_size(reg_id)} bytes, not {len(value)}")
        buffer = (ctypes.c_uint8 * len(value)).from_buffer_copy(value)
        one = (ctypes.c_uint64 * 2)(reg_id, ctypes.addressof(buffer))
        self._ioctl("vcpu", KVM_SET_ONE_REG, one)

    def _do_reg_list(self) -> list[int]:
        capacity = 4096
        raw = (ctypes.c_uint64 * (capacity + 1))()
        raw[0] = capacity
        self._ioctl("vcpu", KVM_GET_REG_LIST, raw)
        return [int(raw[1 + i]) for i in range(int(raw[0]))]

    def _do_add_memory(self, guest_address: int, size: int) -> None:
        self.memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._memory_pointer = ctypes.c_char.from_buffer(self.memory)
        region = (ctypes.c_uint64 * 4)()
        struct.pack_into("<IIQQQ", region, 0, 0, 0, guest_address, size, ctypes.addressof(self._memory_pointer))
        self._ioctl("vm", KVM_SET_USER_MEMORY_REGION, region)

    def _do_write_memory(self, offset: int, data: bytes) -> None:
        assert self.memory is not None, "add_memory first"
        self.memory[offset:offset + len(data)] = data

    def _do_read_memory(self, offset: int, length: int) -> bytes:
        assert self.memory is not None, "add_memory first"
        return bytes(self.memory[offset:offset + length])

    def _do_run(self, immediate_exit: bool, timeout: float) -> Exit:
        assert self.run_area is not None, "create_vcpu first"
        self.run_area[1] = 1 if immediate_exit else 0
        # A guest that never exits would hold KVM_RUN for ever: an interval timer's signal ends
        # the call with EINTR (only the main thread may install the handler; elsewhere, no limit).
        timed = threading.current_thread() is threading.main_thread() and not immediate_exit
        previous = signal.signal(signal.SIGALRM, lambda *_: None) if timed else None
        if timed:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            self._ioctl("vcpu", KVM_RUN, 0)
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        area = bytes(self.run_area[:64])
        reason = struct.unpack_from("<I", area, 8)[0]
        if reason != KVM_EXIT_MMIO:
            return Exit(reason)
        address, data, length, write = struct.unpack_from("<Q8sIB", area, 32)
        return Exit(reason, address, int.from_bytes(data[:length], "little"), bool(write))

    def _do_close(self) -> None:
        if self.run_area is not None:
            self.run_area.close()
            self.run_area = None
        self._memory_pointer = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        for name in ("vgic", "vcpu", "vm", "kvm"):
            fd = self.fds.pop(name, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, Exit):
        return {"exit": {"reason": value.reason, "mmio_address": value.mmio_address, "mmio_data": value.mmio_data,
                         "mmio_write": value.mmio_write}}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, Mapping) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    if isinstance(value, Mapping) and set(value) == {"exit"}:
        return Exit(**value["exit"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class Recorder(KvmSession):
    """Does every call on ``inner`` and writes it down: name, arguments, result or errno."""

    def __init__(self, inner: KvmSession) -> None:
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def _call(self, name: str, *args: Any) -> Any:
        entry: dict[str, Any] = {"call": name, "args": _encode(list(args))}
        self.calls.append(entry)
        try:
            result = self.inner._call(name, *args)
        except OSError as exc:
            entry["errno"] = errno.errorcode.get(exc.errno or 0, "EIO")
            raise
        if result is not None:
            entry["result"] = _encode(result)
        return result

    def recording(self) -> dict[str, Any]:
        return {"calls": self.calls}


class Replay(KvmSession):
    """Answers from a recording, in order; any call that differs from the recording is an error
    naming both (so a replay proves the verifier asks exactly what it asked the real kernel)."""

    def __init__(self, recording: Mapping[str, Any], source: str = "recording") -> None:
        calls = recording.get("calls") if isinstance(recording, Mapping) else None
        if not isinstance(calls, list) or not all(isinstance(c, Mapping) and isinstance(c.get("call"), str) for c in calls):
            raise ProbeError(f"{source}: expected an object with a 'calls' list of {{\"call\": name, ...}}")
        self.calls: list[Mapping[str, Any]] = calls
        self.source = source
        self.position = 0

    def _call(self, name: str, *args: Any) -> Any:
        if self.position >= len(self.calls):
            raise ProbeError(f"{self.source}: the recording ends before call {self.position} ({name})")
        entry = self.calls[self.position]
        where = f"{self.source}: call {self.position}"
        self.position += 1
        if entry["call"] != name or entry.get("args", []) != _encode(list(args)):
            raise ProbeError(f"{where}: the verifier made {name}{tuple(_encode(list(args)))}, "
                             f"the recording has {entry['call']}{tuple(entry.get('args', []))}")
        if "errno" in entry:
            code = getattr(errno, str(entry["errno"]), None)
            if not isinstance(code, int):
                raise ProbeError(f"{where}: unknown errno {entry['errno']!r}")
            raise OSError(code, f"{entry['errno']} (recorded)")
        return _decode(entry.get("result"))
