"""What a released QEMU does with armcpu's renderings: the reason HookSidecar is MigrationSafe only
with a declared SYSREG-capable QEMU. Runs Debian's qemu-system-aarch64 (>= 10, installed as root by
scripts/setup.sh); skipped, saying so, where it is not installed. TCG: no KVM is needed to see
which properties QEMU knows."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from armcpu import pool
from armcpu_testing.fixtures import host_618_profile

QEMU = shutil.which("qemu-system-aarch64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 is not installed (scripts/setup.sh installs it as root)")


def start(cpu: str, machine: str = "virt") -> subprocess.CompletedProcess[str]:
    """QEMU with this -cpu and -M, stopped before the first instruction and quit at once."""
    assert QEMU is not None
    return subprocess.run([QEMU, "-M", machine, "-accel", "tcg", "-cpu", cpu, "-S", "-display", "none", "-nodefaults",
                           "-monitor", "stdio"], input="quit\n", capture_output=True, text=True, timeout=60, check=False)


def test_a_released_qemu_refuses_the_sysreg_properties_the_hook_would_pass() -> None:
    members = [host_618_profile("kvm-guest/graviton3-neoverse-v1-host6.18.json"),
               host_618_profile("kvm-guest/graviton4-neoverse-v2-host6.18.json")]
    rendering = pool.plan_pool(members).qemu
    sysreg = next(p for p in rendering.cpu_properties if p.startswith("SYSREG_"))
    refused = start(f"max,{sysreg}")
    assert refused.returncode != 0 and f"SYSREG_{sysreg.split('_', 1)[1].split('=')[0]}' not found" in refused.stderr, refused.stderr
    machine = start("max", "virt," + rendering.machine_properties[0])
    assert machine.returncode != 0 and "impl-cpu' not found" in machine.stderr, machine.stderr


def test_the_legacy_switches_are_what_a_released_qemu_understands() -> None:
    done = start("max,pauth=off,sve=off,pmu=off")
    assert done.returncode == 0, done.stderr
