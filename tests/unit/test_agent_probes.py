"""The node agent's probes on recorded inputs: host trees, KVM ioctl conversations, MRS dumps."""

from __future__ import annotations

import copy
import ctypes
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from armcpu import catalog, kvm
from armcpu import profile as profile_mod
from armcpu.catalog import Register
from node_agent import plan
from node_agent.collect import NotArm64, Sources, collect
from node_agent.probes import ProbeError, kvm_ioctl, kvm_replay, mrs, sysfs
from tests import agent_fixtures as fx
from tests.helpers import CPUS, REPO

ALL_CPUS = sorted(CPUS.glob("*.json")) + sorted((CPUS / "kvm-guest").glob("*.json"))


def _cpu(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _host(tmp_path: Path, cpu: dict[str, Any]) -> Path:
    root = tmp_path / "host"
    fx.write_host_tree(root, cpu, ncpus=3, kernel="6.18.30")
    return root


class DumpReader:
    """Answers MRS reads from a dump and fails the test on any register EL0 cannot read."""

    def __init__(self, registers: dict[str, int]) -> None:
        self.registers = registers
        self.asked: list[str] = []

    def __call__(self, reg: Register) -> int:
        assert mrs.readable_at_el0(reg), f"the probe would execute mrs {reg.name} and die of SIGILL"
        self.asked.append(reg.name)
        return self.registers.get(reg.name, 0)


@pytest.mark.parametrize("path", ALL_CPUS, ids=lambda p: p.stem)
def test_kvm_probe_reads_every_real_cpu_exactly(tmp_path: Path, path: Path) -> None:
    cpu = _cpu(path)
    regs = fx.registers_of(cpu)
    masks = kvm.assumed_writable_masks(aarch32_el0=False)
    replay = kvm_replay.Replay(fx.conversation(regs, masks))
    got = collect("node-a", Sources(root=_host(tmp_path, cpu), kvm=replay))
    assert got.probe == "kvm"
    assert dict(got.registers) == regs
    assert got.writable == {name: masks[name] for name in regs if masks.get(name)} | {
        name: 0 for name in regs if not masks.get(name) and catalog.feature_id_range_index(*catalog.register(name).encoding) is not None
    }
    assert replay.position == len(replay.calls), "every recorded setup call was made"
    assert [c.midr for c in got.cores] == [regs["MIDR_EL1"]] and got.cores[0].cpus == (0, 1, 2)
    assert got.kernel == "6.18.30"
    assert list(got.hwcaps) == list(cpu.get("cpuinfo_features", []))
    assert got.kvm.vcpu_features == ("psci-0.2", "pmu-v3") and got.kvm.writable_imp_id_regs is True
    # the published form is a profile the CLI reads back to the same fingerprint as the source file
    reread = profile_mod.from_dict(profile_mod.to_dict(got), "published")
    assert reread.fingerprint == profile_mod.from_dict(cpu, path.name).fingerprint


@pytest.mark.parametrize("path", ALL_CPUS, ids=lambda p: p.stem)
def test_mrs_probe_reads_only_what_el0_may(tmp_path: Path, path: Path) -> None:
    cpu = _cpu(path)
    regs = fx.registers_of(cpu)
    reader = DumpReader(regs)
    got = collect("node-a", Sources(root=_host(tmp_path, cpu), mrs_reader=reader))
    expected = {r.name: regs.get(r.name, 0) for r in mrs.registers_to_read()}
    if "cpuid" not in cpu.get("cpuinfo_features", []):
        assert got.probe == "sysfs" and reader.asked == []
        return
    assert got.probe == "mrs" and got.writable is None
    assert dict(got.registers) == expected
    assert "CLIDR_EL1" not in reader.asked and "ID_PFR0_EL1" not in reader.asked


def test_kvm_sve_and_ptrauth_are_requested_and_sve_finalized(tmp_path: Path) -> None:
    cpu = _cpu(CPUS / "graviton3.json")
    regs = fx.registers_of(cpu)
    replay = kvm_replay.Replay(fx.conversation(regs, None, sve=True, ptrauth=True, imp_id=False))
    got = collect("n", Sources(root=_host(tmp_path, cpu), kvm=replay))
    assert got.kvm.vcpu_features == ("psci-0.2", "pmu-v3", "sve", "ptrauth-address", "ptrauth-generic")
    assert got.writable is None and got.kvm.reg_mask_ranges is False and got.kvm.writable_imp_id_regs is False
    assert replay.calls[-1]["name"] == "KVM_ARM_VCPU_FINALIZE(SVE)" and replay.position == len(replay.calls)


def test_request_numbers_and_struct_layouts_match_the_uapi_headers() -> None:
    assert ctypes.sizeof(kvm_ioctl.KvmOneReg) == 16
    assert ctypes.sizeof(kvm_ioctl.KvmVcpuInit) == 32
    assert ctypes.sizeof(kvm_ioctl.RegMaskRange) == 64
    assert kvm_ioctl.KVM_GET_ONE_REG == 0x4010AEAB  # the value in ../shared/background (KVM_GET_ONE_REG)
    assert kvm_ioctl.KVM_ARM_GET_REG_WRITABLE_MASKS == 0x8040AEB6
    assert kvm_ioctl.KVM_ARM_VCPU_INIT == fx.VCPU_INIT and kvm_ioctl.KVM_ARM_PREFERRED_TARGET == fx.PREFERRED_TARGET
    assert kvm_ioctl.KVM_ARM_VCPU_FINALIZE == fx.VCPU_FINALIZE and kvm_ioctl.KVM_CREATE_VCPU == fx.CREATE_VCPU
    assert catalog.sysreg_id(*catalog.register("ID_AA64ISAR0_EL1").encoding) == 0x603000000013C030
    assert kvm_ioctl.mask_index_to_register()[48] == "ID_AA64ISAR0_EL1"
    assert kvm_ioctl.mask_index_to_register()[129] == "CTR_EL0"


@pytest.mark.parametrize(
    ("register", "encoding"),
    [("MIDR_EL1", 0xD5380000), ("ID_AA64PFR0_EL1", 0xD5380400), ("ID_AA64ISAR0_EL1", 0xD5380600),
     ("ID_AA64MMFR2_EL1", 0xD5380740), ("CTR_EL0", 0xD53B0020), ("DCZID_EL0", 0xD53B00E0), ("REVIDR_EL1", 0xD53800C0)],
)
def test_mrs_instruction_encodings(register: str, encoding: int) -> None:
    """Encodings as an assembler emits them for ``mrs x0, <reg>``."""
    assert mrs.mrs_instruction(catalog.register(register)) == encoding


def test_native_mrs_refuses_registers_el0_cannot_read() -> None:
    with pytest.raises(ValueError, match="SIGILL"):
        mrs.NativeMrs([catalog.register("CLIDR_EL1")])


def test_recorded_committed_conversation_replays(tmp_path: Path) -> None:
    replay = kvm_replay.load(REPO / "tests/fixtures/kvm/graviton4-host6.18.json")
    got = collect("g4", Sources(root=REPO / "tests/fixtures/hosts/graviton4", kvm=replay))
    source = _cpu(CPUS / "kvm-guest/graviton4-neoverse-v2-host6.18.json")
    assert got.fingerprint == profile_mod.from_dict(source).fingerprint
    assert got.kernel == "6.18.30-61.116.amzn2023.aarch64"
    assert got.writable is not None and got.writable["ID_AA64ISAR0_EL1"] == kvm.assumed_writable_masks(False)["ID_AA64ISAR0_EL1"]


def test_recorder_writes_what_replay_reads(tmp_path: Path) -> None:
    cpu = _cpu(CPUS / "nvidia-grace.json")
    conv = fx.conversation(fx.registers_of(cpu), kvm.assumed_writable_masks(True), sve=True, ptrauth=True)
    recorder = kvm_replay.Recorder(kvm_replay.Replay(conv))
    first = kvm_ioctl.probe(tmp_path, recorder)
    again = kvm_ioctl.probe(tmp_path, kvm_replay.Replay(json.loads(json.dumps(recorder.recording()))))
    assert first == again
    assert [c["request"] for c in recorder.recording()["calls"]] == [c["request"] for c in conv["calls"]]


# ----------------------------------------------------------------- bad input: clear errors, no crash


def _g4_conversation() -> dict[str, Any]:
    return copy.deepcopy(json.loads((REPO / "tests/fixtures/kvm/graviton4-host6.18.json").read_text()))


def test_truncated_conversation_names_the_missing_call(tmp_path: Path) -> None:
    conv = _g4_conversation()
    conv["calls"] = conv["calls"][:5]
    with pytest.raises(ProbeError, match=r"recording ends before ioctl 0x0000ae03 on the vm fd"):
        kvm_ioctl.probe(tmp_path, kvm_replay.Replay(conv))


def test_wrong_request_number_is_refused(tmp_path: Path) -> None:
    conv = _g4_conversation()
    conv["calls"][0]["request"] = "0x0000ae99"
    with pytest.raises(ProbeError, match=r"expected ioctl 0x0000ae99 on the kvm fd, the probe made 0x0000ae00"):
        kvm_ioctl.probe(tmp_path, kvm_replay.Replay(conv))


def test_kernel_error_names_the_ioctl(tmp_path: Path) -> None:
    conv = _g4_conversation()
    init = next(c for c in conv["calls"] if c["name"] == "KVM_ARM_VCPU_INIT")
    init["errno"] = "EINVAL"
    with pytest.raises(ProbeError, match=r"KVM_ARM_VCPU_INIT \(ioctl 0x4020aeae\) failed: EINVAL"):
        kvm_ioctl.probe(tmp_path, kvm_replay.Replay(conv))


def test_wrong_api_version_is_refused(tmp_path: Path) -> None:
    conv = _g4_conversation()
    conv["calls"][0]["ret"] = 11
    with pytest.raises(ProbeError, match="returned 11, expected 12"):
        kvm_ioctl.probe(tmp_path, kvm_replay.Replay(conv))


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(calls="nope"),
    lambda c: c["one_reg"].update({"0x603000000013c030": "12"}),
    lambda c: c["writable_masks"].update({"999": "0x1"}),
    lambda c: c["calls"][1].update(ret="many"),
])
def test_malformed_recordings_give_clear_errors(tmp_path: Path, mutate: Any) -> None:
    conv = _g4_conversation()
    mutate(conv)
    with pytest.raises(ProbeError, match="recording"):
        kvm_ioctl.probe(tmp_path, kvm_replay.Replay(conv, "recording"))


def test_unreadable_recording_file(tmp_path: Path) -> None:
    bad = tmp_path / "conv.json"
    bad.write_text('{"calls": [')
    with pytest.raises(ProbeError, match="cannot read the recording"):
        kvm_replay.load(bad)


def test_no_dev_kvm_means_unavailable_not_error(tmp_path: Path) -> None:
    with pytest.raises(kvm_ioctl.ProbeUnavailable, match="dev/kvm"):
        kvm_ioctl.probe(tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    ("garbage\n", "expected a hex value"),
    ("0x1234", None),
    ("", "expected a hex value"),
    ("0x1000000000", "32 bits wide"),
])
def test_sysfs_malformed_midr(tmp_path: Path, content: str, message: str | None) -> None:
    fx.write_host_tree(tmp_path, {"midr": "0x410fd4f1", "registers": {}}, ncpus=2)
    (tmp_path / "sys/devices/system/cpu/cpu1/regs/identification/midr_el1").write_text(content)
    if message is None:
        assert [c.midr for c in sysfs.read_cores(tmp_path)] == [0x410FD4F1, 0x1234]
        return
    with pytest.raises(ProbeError, match=f"cpu1/regs/identification/midr_el1: .*{message}"):
        sysfs.read_cores(tmp_path)


def test_big_little_reports_each_core_type() -> None:
    got = collect("bl", Sources(root=REPO / "tests/fixtures/hosts/biglittle"))
    assert [(hex(c.midr), c.cpus) for c in got.cores] == [("0x410fd034", (0, 1, 2, 3)), ("0x410fd082", (4, 5))]
    assert got.probe == "sysfs"
    assert plan.cpu_label(got) == "arm-cortex-a53.arm-cortex-a72"


def test_not_arm64_is_said_once_not_crashed() -> None:
    with pytest.raises(NotArm64, match="x86_64"):
        collect("n", Sources(root=REPO / "tests/fixtures/hosts/graviton4", machine="x86_64"))


def test_empty_root_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="no probe could read this CPU"):
        collect("n", Sources(root=tmp_path))


# ----------------------------------------------------------------- the command line


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node_agent.main", *args], capture_output=True, text=True, check=False, cwd=REPO)


def test_once_json_is_a_profile_armcpu_baseline_accepts(tmp_path: Path) -> None:
    out = _agent("--once", "-o", "json", "--node-name", "g4", "--machine", "aarch64",
                 "--host-root", "tests/fixtures/hosts/graviton4", "--kvm-replay", "tests/fixtures/kvm/graviton4-host6.18.json")
    assert out.returncode == 0, out.stderr
    (tmp_path / "g4.json").write_text(out.stdout)
    baseline = subprocess.run([sys.executable, "-m", "armcpu_cli.main", "baseline", str(tmp_path / "g4.json"), "-o", "json"],
                              capture_output=True, text=True, check=False, cwd=REPO)
    assert baseline.returncode == 0, baseline.stderr
    result = json.loads(baseline.stdout)
    assert result["model"]["members"] == ["g4"]
    assert result["model"]["fingerprint"] == json.loads(out.stdout)["fingerprint"]


def test_once_on_another_arch_exits_2_with_a_message() -> None:
    out = _agent("--once", "--machine", "x86_64", "--host-root", "tests/fixtures/hosts/graviton4")
    assert out.returncode == 2 and "not arm64" in out.stderr
