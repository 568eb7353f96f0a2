"""Record and replay the KVM probe's ioctl conversation.

``armcpu-agent --once --kvm-record FILE`` on a real node writes every ioctl the probe made, with
the raw struct bytes that went in and came out; ``--kvm-replay FILE`` answers the probe from such
a file instead of /dev/kvm. Tests replay conversations (and bug reports can be replayed the same
way). The replayer checks each call against the recording: the same fd, request number, argument
and input bytes, in the same order; KVM_GET_ONE_REG is answered by register id in any order.

File format (JSON)::

    {"calls": [{"fd": "kvm|vm|vcpu", "request": "0x0000ae03", "name": "...", "arg": 165,
                "in": "<hex of the struct before the call>", "out": "<hex after>",
                "ret": 0, "errno": "ENOENT"}],
     "one_reg": {"0x603000000013c020": "0x...", ...},
     "writable_masks": {"48": "0x...", ...}}

``ret`` may be "vm" or "vcpu" for the calls that create those file descriptors.
"""

from __future__ import annotations

import ctypes
import errno
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.probes import ProbeError
from node_agent.probes.kvm_ioctl import (
    FEATURE_ID_RANGE_SIZE,
    KVM_ARM_GET_REG_WRITABLE_MASKS,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_GET_ONE_REG,
    IoctlArg,
    IoctlBackend,
    LinuxIoctl,
)

_FDS = {"kvm": 100, "vm": 101, "vcpu": 102}
_NAMES = {v: k for k, v in _FDS.items()}


def _errno(name: str) -> int:
    value = getattr(errno, name, None)
    if not isinstance(value, int):
        raise ProbeError(f"recording: unknown errno {name!r}")
    return value


def _hex(raw: object, where: str) -> int:
    if not isinstance(raw, str) or not raw.startswith("0x"):
        raise ProbeError(f"recording: {where}: expected a hex string, got {raw!r}")
    try:
        return int(raw, 16)
    except ValueError:
        raise ProbeError(f"recording: {where}: {raw!r} is not hex") from None


class Replay:
    """An :class:`IoctlBackend` that answers from a recording and refuses anything unrecorded."""

    def __init__(self, recording: Mapping[str, Any], source: str = "recording") -> None:
        if not isinstance(recording, Mapping) or not isinstance(recording.get("calls"), list):
            raise ProbeError(f"{source}: expected an object with a 'calls' list")
        self.source = source
        self.calls: list[Mapping[str, Any]] = list(recording["calls"])
        self.position = 0
        raw_regs = recording.get("one_reg", {})
        raw_masks = recording.get("writable_masks")
        if not isinstance(raw_regs, Mapping):
            raise ProbeError(f"{source}: one_reg: expected an object of id: value")
        self.one_reg = {_hex(k, f"one_reg key {k}"): _hex(v, f"one_reg.{k}") for k, v in raw_regs.items()}
        self.masks: dict[int, int] | None = None
        if raw_masks is not None:
            if not isinstance(raw_masks, Mapping):
                raise ProbeError(f"{source}: writable_masks: expected an object of index: value")
            self.masks = {}
            for k, v in raw_masks.items():
                if not str(k).isdigit() or not 0 <= int(k) < FEATURE_ID_RANGE_SIZE:
                    raise ProbeError(f"{source}: writable_masks: index {k!r} outside 0..{FEATURE_ID_RANGE_SIZE - 1}")
                self.masks[int(k)] = _hex(v, f"writable_masks.{k}")
        self.open_path: Path | None = None

    def open(self, path: Path) -> int:
        self.open_path = path
        self.position = 0  # every probe starts its conversation again: a replaying agent probes every cycle
        return _FDS["kvm"]

    def close(self, fd: int) -> None:
        return None

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int:
        if request == KVM_GET_ONE_REG:
            return self._one_reg(fd, arg)
        if request == KVM_ARM_GET_REG_WRITABLE_MASKS:
            return self._masks(arg)
        if self.position >= len(self.calls):
            raise ProbeError(f"{self.source}: the recording ends before ioctl {request:#010x} on the {_NAMES.get(fd, fd)} fd")
        call = self.calls[self.position]
        where = f"{self.source}: call {self.position} ({call.get('name', '?')})"
        self.position += 1
        if _FDS.get(str(call.get("fd"))) != fd or _hex(call.get("request"), f"{where}.request") != request:
            raise ProbeError(f"{where}: expected ioctl {call.get('request')} on the {call.get('fd')} fd, "
                             f"the probe made {request:#010x} on the {_NAMES.get(fd, fd)} fd")
        if isinstance(arg, int):
            if call.get("arg") != arg:
                raise ProbeError(f"{where}: argument {arg}, the recording has {call.get('arg')}")
        else:
            size = ctypes.sizeof(arg)
            if "in" in call and bytes(arg) != bytes.fromhex(call["in"]):
                raise ProbeError(f"{where}: input bytes {bytes(arg).hex()}, the recording has {call['in']}")
            if "out" in call:
                out = bytes.fromhex(call["out"])
                if len(out) != size:
                    raise ProbeError(f"{where}: 'out' has {len(out)} bytes, the struct has {size}")
                ctypes.memmove(ctypes.addressof(arg), out, size)
        if "errno" in call:
            code = _errno(call["errno"])
            raise OSError(code, f"{call['errno']} (recorded)")
        ret = call.get("ret", 0)
        if isinstance(ret, str):
            if ret not in _FDS:
                raise ProbeError(f"{where}: ret {ret!r} is neither a number nor vm/vcpu")
            return _FDS[ret]
        if not isinstance(ret, int):
            raise ProbeError(f"{where}: ret {ret!r} is not an integer")
        return ret

    def _one_reg(self, fd: int, arg: IoctlArg) -> int:
        if fd != _FDS["vcpu"] or isinstance(arg, int) or ctypes.sizeof(arg) != 16:
            raise ProbeError(f"{self.source}: KVM_GET_ONE_REG must be a vcpu ioctl on a 16-byte kvm_one_reg")
        reg_id, addr = struct.unpack("<QQ", bytes(arg))
        if reg_id not in self.one_reg:
            raise OSError(errno.ENOENT, "ENOENT (not in the recording)")
        ctypes.c_uint64.from_address(addr).value = self.one_reg[reg_id]
        return 0

    def _masks(self, arg: IoctlArg) -> int:
        if self.masks is None:
            raise OSError(errno.EINVAL, "EINVAL (the recording has no writable masks)")
        if isinstance(arg, int) or ctypes.sizeof(arg) != 64:
            raise ProbeError(f"{self.source}: KVM_ARM_GET_REG_WRITABLE_MASKS takes a 64-byte reg_mask_range")
        fields = struct.unpack("<QI13I", bytes(arg))
        if fields[1] != 0 or any(fields[2:]):
            raise OSError(errno.EINVAL, "EINVAL (range and reserved must be 0)")
        array = (ctypes.c_uint64 * FEATURE_ID_RANGE_SIZE).from_address(fields[0])
        for index in range(FEATURE_ID_RANGE_SIZE):
            array[index] = self.masks.get(index, 0)
        return 0


def load(path: Path) -> Replay:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{path}: cannot read the recording: {exc}") from None
    return Replay(data, str(path))


class Recorder:
    """Wraps a real backend and writes down every call, in the format :class:`Replay` reads."""

    def __init__(self, inner: IoctlBackend | None = None) -> None:
        self.inner = inner or LinuxIoctl()
        self.fd_names: dict[int, str] = {}
        self.calls: list[dict[str, Any]] = []
        self.one_reg: dict[str, str] = {}
        self.masks: dict[str, str] | None = None

    def open(self, path: Path) -> int:
        fd = self.inner.open(path)
        self.fd_names[fd] = "kvm"
        return fd

    def close(self, fd: int) -> None:
        self.inner.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int:
        if request == KVM_GET_ONE_REG and not isinstance(arg, int):
            reg_id, addr = struct.unpack("<QQ", bytes(arg))
            ret = self.inner.ioctl(fd, request, arg)  # ENOENT propagates and is simply not recorded
            self.one_reg[f"{reg_id:#018x}"] = f"{ctypes.c_uint64.from_address(addr).value:#018x}"
            return ret
        if request == KVM_ARM_GET_REG_WRITABLE_MASKS and not isinstance(arg, int):
            addr = struct.unpack("<Q", bytes(arg)[:8])[0]
            ret = self.inner.ioctl(fd, request, arg)
            array = (ctypes.c_uint64 * FEATURE_ID_RANGE_SIZE).from_address(addr)
            self.masks = {str(i): f"{array[i]:#018x}" for i in range(FEATURE_ID_RANGE_SIZE) if array[i]}
            return ret
        entry: dict[str, Any] = {"fd": self.fd_names.get(fd, str(fd)), "request": f"{request:#010x}"}
        if isinstance(arg, int):
            entry["arg"] = arg
        else:
            entry["in"] = bytes(arg).hex()
        self.calls.append(entry)
        try:
            ret = self.inner.ioctl(fd, request, arg)
        except OSError as exc:
            entry["errno"] = errno.errorcode.get(exc.errno or 0, "EIO")
            raise
        if not isinstance(arg, int):
            entry["out"] = bytes(arg).hex()
        entry["ret"] = ret
        if request in (KVM_CREATE_VM, KVM_CREATE_VCPU):
            name = "vm" if request == KVM_CREATE_VM else "vcpu"
            self.fd_names[ret] = name
            entry["ret"] = name
        return ret

    def recording(self) -> dict[str, Any]:
        out: dict[str, Any] = {"calls": self.calls, "one_reg": self.one_reg}
        if self.masks is not None:
            out["writable_masks"] = self.masks
        return out
