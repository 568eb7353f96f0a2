"""Emulated arm64 hosts: boot the Debian arm64 guest of ``scripts/build-arm64-guest.sh`` under QEMU's
TCG with EL2 (``-machine virt,virtualization=on``), so that a real Linux kernel offers /dev/kvm on a
chosen QEMU CPU model, and run the node agent inside it.

Each run boots a read-only copy of the cached root filesystem image plus two per-run disks:

- ``/dev/vdb`` (ext4): the armcpu wheel installed with ``pip --target``, and ``run.sh``, the script the
  image's init runs (so the cached image never changes with the code);
- ``/dev/vdc`` (raw): what the guest returns, as a tar stream written straight onto the disk.

Inside, the agent runs twice: once with /dev/kvm (probe ``kvm``, with ``--kvm-record``) and once under
a host root without it (probe ``mrs``). Nothing here is a mock: the ioctls and MRS traps are served by
the emulated machine's real Linux kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-arm64-guest.sh"
OUT_DISK_BYTES = 16 << 20

# The script /sbin/armcpu-tier-init runs from /dev/vdb. The agent's second run sees a host root with
# /sys and /proc but no /dev/kvm, which is what a node without KVM looks like to it.
RUN_SH = """#!/bin/sh
set -u
out=/tmp/out
mkdir -p $out /tmp/nokvm
ln -s /sys /tmp/nokvm/sys
ln -s /proc /tmp/nokvm/proc
export PYTHONPATH=/opt/armcpu/site
agent="python3 -m node_agent.main --once -o json --log-format text --node-name @NODE@"
uname -r > $out/kernel
python3 --version > $out/python 2>&1
grep -m1 Features /proc/cpuinfo > $out/cpuinfo-features
ls -l /dev/kvm > $out/dev-kvm 2>&1
start=$(date +%s%N)
$agent --kvm-record $out/kvm-conversation.json > $out/kvm.json 2> $out/kvm.err
echo $? > $out/kvm.rc
mid=$(date +%s%N)
$agent --host-root /tmp/nokvm > $out/mrs.json 2> $out/mrs.err
echo $? > $out/mrs.rc
end=$(date +%s%N)
echo "{\\"kvm_ns\\": $((mid - start)), \\"mrs_ns\\": $((end - mid))}" > $out/timing.json
dmesg > $out/dmesg
tar -cf /dev/vdc -C $out .
sync
"""


@dataclass(frozen=True)
class Guest:
    """A built guest: kernel, initramfs, root filesystem image and what they are."""

    directory: Path

    @property
    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.directory / "guest.json").read_text())
        return data

    @property
    def kernels(self) -> list[str]:
        """Kernel releases the image boots, oldest first."""
        return sorted(self.info["kernels"], key=release_key)


def release_key(release: str) -> tuple[int, ...]:
    """A kernel release for sorting: ``7.3.4+deb13-arm64`` -> (7, 3, 4)."""
    return tuple(int(part) for part in release.split("+")[0].split("-")[0].split("."))


def node_name(cpu: str, kernel: str) -> str:
    """A DNS-label-safe name for one (CPU model, kernel) host, e.g. neoverse-n1-linux-6.12.117."""
    return f"{cpu}-linux-{kernel.split('+')[0].split('-')[0]}"


@dataclass
class Run:
    """What one boot returned: the files the guest wrote, and how long the boot took."""

    cpu: str
    kernel: str
    files: dict[str, bytes]
    console: str
    seconds: float

    def text(self, name: str) -> str:
        return self.files[name].decode().strip()

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])


def build_guest() -> Guest:
    """Build (or find cached) the guest image; needs root the first time."""
    done = _run(BUILD_SCRIPT.name, ["bash", str(BUILD_SCRIPT)])
    return Guest(Path(done.stdout.strip().splitlines()[-1]))


def _run(what: str, command: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a captured command; a failure raises with the command's own message (its stderr), which
    a bare CalledProcessError would keep out of the test report."""
    done = subprocess.run(command, timeout=timeout, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited with {done.returncode}: {done.stderr.strip()[-4000:]}")
    return done


def wheel_into(site: Path) -> None:
    """Install this checkout's armcpu wheel (no dependencies: the guest has Debian's) into ``site``,
    and beside it this test support (not part of the wheel), whose tier driver runs in the guest."""
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "-w", wheels, str(REPO)], check=True)
        (wheel,) = Path(wheels).glob("armcpu-*.whl")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                        "--target", str(site), str(wheel)], check=True)
    shutil.rmtree(site / "armcpu_testing", ignore_errors=True)  # a stale build/ may have put an old copy into the wheel
    shutil.copytree(REPO / "armcpu_testing", site / "armcpu_testing", ignore=shutil.ignore_patterns("__pycache__"))


def _ext4(source: Path, image: Path, size_mb: int) -> None:
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(source), str(image), f"{size_mb}M"], check=True)


@dataclass(frozen=True)
class Work:
    """What one boot does: the script the guest's init runs (``@NODE@`` becomes the host's name)
    and extra files put beside it on the payload disk."""

    run_sh: str = RUN_SH
    files: tuple[tuple[str, bytes], ...] = ()
    out_bytes: int = OUT_DISK_BYTES


def boot(guest: Guest, cpu: str, kernel: str, site: Path, workdir: Path, timeout: float = 900.0, work: Work = Work()) -> Run:
    """Boot ``guest``'s ``kernel`` on QEMU CPU model ``cpu`` and return what ``work`` wrote."""
    workdir.mkdir(parents=True, exist_ok=True)
    payload = workdir / "payload"
    if payload.exists():
        shutil.rmtree(payload)
    shutil.copytree(site, payload / "site")
    (payload / "run.sh").write_text(work.run_sh.replace("@NODE@", node_name(cpu, kernel)))
    (payload / "run.sh").chmod(0o755)
    size = 64
    for name, data in work.files:
        (payload / name).write_bytes(data)
        size += len(data) * 2 // (1 << 20)
    _ext4(payload, workdir / "payload.ext4", size)
    out_disk = workdir / "out.raw"
    with out_disk.open("wb") as fh:
        fh.truncate(work.out_bytes)
    console = workdir / "console.log"
    d = guest.directory
    command = [
        "qemu-system-aarch64", "-machine", "virt,virtualization=on,gic-version=3", "-cpu", cpu,
        "-smp", "1", "-m", "1024", "-accel", "tcg", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-monitor", "none",
        # no network: the guest needs none, and QEMU's default NIC wants a boot ROM (efi-virtio.rom,
        # Debian's ipxe-qemu) that a --no-install-recommends QEMU does not have
        "-nic", "none",
        "-kernel", str(d / f"vmlinuz-{kernel}"), "-initrd", str(d / f"initrd.img-{kernel}"),
        "-append", "root=/dev/vda ro console=ttyAMA0 init=/sbin/armcpu-tier-init panic=-1 quiet",
        "-drive", f"file={d / 'rootfs.ext4'},if=virtio,format=raw,snapshot=on",
        "-drive", f"file={workdir / 'payload.ext4'},if=virtio,format=raw",
        "-drive", f"file={out_disk},if=virtio,format=raw",
    ]
    start = time.monotonic()
    _run(f"QEMU for {cpu} with Linux {kernel}", command, timeout)
    seconds = time.monotonic() - start
    return Run(cpu=cpu, kernel=kernel, files=read_out(out_disk), console=console.read_text(errors="replace"), seconds=seconds)


def read_out(out_disk: Path) -> dict[str, bytes]:
    """The files the guest wrote onto its output disk (a tar stream); {} when it wrote nothing."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(out_disk, "r:") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    files[member.name.removeprefix("./")] = extracted.read()
    except (tarfile.ReadError, FileNotFoundError):
        pass  # the guest wrote nothing: the caller reports the console
    return files


def runs_in(workdir: Path, hosts: list[tuple[str, str]]) -> dict[tuple[str, str], Run]:
    """The runs a kept ``--workdir`` holds (to recompute from them without booting again)."""
    return {h: Run(h[0], h[1], read_out(workdir / node_name(*h) / "out.raw"), "", 0.0) for h in hosts}


def boot_all(guest: Guest, cpus: list[str], workdir: Path, kernels: list[str] | None = None,
             parallel: int | None = None, work: dict[tuple[str, str], Work] | None = None) -> dict[tuple[str, str], Run]:
    """One boot per (CPU model, kernel), ``parallel`` at a time (default: one per core); ``work``
    says what each host does (default: the agent's two probe runs)."""
    site = workdir / "site"
    if not site.exists():
        wheel_into(site)
    hosts = [(cpu, kernel) for kernel in (kernels or guest.kernels) for cpu in cpus]
    if work is not None:
        hosts = [h for h in hosts if h in work]
    workers = parallel or os.cpu_count() or 1
    # the slowest hosts first, so that two cores are not left waiting on one `max` boot at the end
    ordered = sorted(hosts, key=lambda h: h[0] != "max")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = pool.map(lambda host: boot(guest, host[0], host[1], site, workdir / node_name(*host),
                                          work=(work or {}).get(host, Work())), ordered)
        done = dict(zip(ordered, runs, strict=True))
    return {h: done[h] for h in hosts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m armcpu_testing.emulated",
                                description="Boot emulated arm64 hosts and print what the agent saw in each.")
    p.add_argument("cpus", nargs="+", help="QEMU CPU models, e.g. neoverse-n1 cortex-a72 max")
    p.add_argument("--workdir", type=Path, default=None, help="keep disks and console logs here")
    p.add_argument("--record-into", type=Path, default=None,
                   help="write each CPU's KVM conversation and profiles into this fixtures directory")
    args = p.parse_args(argv)
    guest = build_guest()
    with tempfile.TemporaryDirectory() as tmp:
        runs = boot_all(guest, args.cpus, args.workdir or Path(tmp))
        for (cpu, kernel), run in runs.items():
            print(f"{cpu} on Linux {kernel}: {run.seconds:.0f}s, kvm rc={run.text('kvm.rc') if 'kvm.rc' in run.files else '?'}, "
                  f"mrs rc={run.text('mrs.rc') if 'mrs.rc' in run.files else '?'}")
            if args.record_into:
                record(run, guest, args.record_into)
    return 0


def record(run: Run, guest: Guest, into: Path) -> Path:
    """Keep one run as a fixture: the conversation, both profiles, and where they came from."""
    info = guest.info
    target = into / node_name(run.cpu, run.kernel)
    target.mkdir(parents=True, exist_ok=True)
    conversation = run.json("kvm-conversation.json")
    conversation["source"] = (f"Recorded by armcpu_testing.emulated: Linux {run.kernel} (Debian {info['suite']}) "
                              f"under {info['qemu']}, TCG, -machine virt,virtualization=on -cpu {run.cpu}")
    conversation["emulated"] = {"qemu_cpu": run.cpu, "kernel": run.kernel, "qemu": info["qemu"]}
    (target / "kvm-conversation.json").write_text(json.dumps(conversation, indent=1) + "\n")
    for name in ("kvm.json", "mrs.json"):
        (target / f"profile-{name}").write_text(json.dumps(run.json(name), indent=1, sort_keys=True) + "\n")
    return target


if __name__ == "__main__":
    sys.exit(main())
