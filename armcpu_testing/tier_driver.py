"""What an emulated arm64 host does in one boot of the truth-matrix tier (run inside it, as root).

It reads ``jobs.json`` beside it and writes ``results.json`` into the output directory:

- ``verify``: each model written into a scratch vCPU on this host's real KVM and read back by the
  guest payload (:func:`node_agent.verify_cmd.verify_on`), with armcpu's prediction beside it;
- ``save``: a guest started with a model, paused after its first pass, its vCPU state and memory
  saved for another host (:func:`node_agent.probes.kvm_verify.save`);
- ``resume``: guests saved on other hosts restored into a fresh vCPU here and resumed;
- ``stock_save`` / ``stock_resume``: Debian's stock QEMU (``-accel kvm -cpu host``) runs the payload
  as a tiny guest, saves it with ``migrate file:``, and another host restores it with
  ``-incoming`` -- what a cluster without a SYSREG-capable QEMU does when it migrates.

Only the standard library and armcpu's own packages: the emulated host has Debian's Python.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from armcpu import guest_payload
from armcpu.profile import to_dict
from node_agent import verify_cmd
from node_agent.collect import Sources, collect
from node_agent.probes import ProbeError, kvm_session, kvm_verify

QEMU = "qemu-system-aarch64"


def _regs(model: dict[str, str]) -> dict[str, int]:
    return {k: int(v, 16) for k, v in model.items()}


def _qmp(path: Path, timeout: float = 60.0) -> Any:
    """Connect to QEMU's QMP socket (QEMU creates it a moment after it starts) and negotiate; the stream."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    sock.settimeout(timeout)
    stream = sock.makefile("rwb")
    json.loads(stream.readline())  # greeting
    _command(stream, "qmp_capabilities")
    return stream


def _command(stream: Any, name: str, **arguments: Any) -> Any:
    stream.write(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
    stream.flush()
    while True:
        reply = json.loads(stream.readline())
        if "return" in reply:
            return reply["return"]
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error'].get('desc')}")


def _wait_migration(stream: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state: dict[str, Any] = _command(stream, "query-migrate")
        if state.get("status") in ("completed", "failed", "cancelled"):
            return state
        time.sleep(0.2)
    return {"status": "timeout"}


def _qemu(workdir: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], Any, Path]:
    qmp_path = workdir / "qmp.sock"
    qmp_path.unlink(missing_ok=True)
    log = workdir / "qemu.log"
    command = [QEMU, "-machine", "virt,gic-version=3", "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "64",
               "-display", "none", "-nodefaults", "-no-user-config", "-nic", "none", "-serial", "none",
               "-kernel", str(workdir / "stock-guest.elf"), "-qmp", f"unix:{qmp_path},server=on,wait=off", *extra]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        stream = _qmp(qmp_path)
    except OSError:
        process.wait(timeout=30)
        raise RuntimeError(f"QEMU exited {process.returncode}: {log.read_text(errors='replace')[-2000:]}") from None
    return process, stream, log


def _guest_reads(stream: Any, workdir: Path, pass_number: int) -> dict[str, int]:
    payload = guest_payload.build(repeat_last_pass=True)
    offset, length = payload.results_window()
    dump = workdir / "memory.bin"
    _command(stream, "pmemsave", val=guest_payload.RAM_BASE + offset, size=length, filename=str(dump))
    return payload.results(dump.read_bytes(), pass_number)


def _stop(process: subprocess.Popen[bytes], stream: Any, log: Path) -> str:
    try:
        _command(stream, "quit")
    except (OSError, RuntimeError, ValueError):
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return log.read_text(errors="replace").strip()


def stock_save(workdir: Path, out: Path) -> dict[str, Any]:
    """Boot the payload under stock QEMU, let it read its registers, save it to ``out``."""
    process, stream, log = _qemu(workdir, [])
    time.sleep(2.0)  # the guest loops over its last pass: let it read the registers a few times
    reads = _guest_reads(stream, workdir, guest_payload.PASSES)
    _command(stream, "stop")
    _command(stream, "migrate", uri=f"file:{out}")
    state = _wait_migration(stream)
    output = _stop(process, stream, log)
    return {"status": state.get("status"), "error": state.get("error-desc"), "qemu_output": output[-2000:],
            "reads": {k: f"{v:#018x}" for k, v in reads.items()}, "size": out.stat().st_size if out.exists() else 0}


def stock_resume(workdir: Path, source: Path) -> dict[str, Any]:
    """Restore a stock-QEMU save with ``-incoming``; on success, let the guest run and read what it sees here."""
    process, stream, log = _qemu(workdir, ["-incoming", "defer"])
    try:
        _command(stream, "migrate-incoming", uri=f"file:{source}")
        state = _wait_migration(stream)
        reads = None
        if state.get("status") == "completed":
            _command(stream, "cont")
            time.sleep(2.0)
            reads = {k: f"{v:#018x}" for k, v in _guest_reads(stream, workdir, guest_payload.PASSES).items()}
    except (RuntimeError, OSError, ValueError) as exc:  # QEMU refused the stream and exited: its own words are in its log
        state, reads = {"status": "failed", "error-desc": f"QMP: {exc}"}, None
    output = _stop(process, stream, log)
    return {"status": state.get("status"), "error": state.get("error-desc"), "qemu_output": output[-2000:], "reads": reads}


def main() -> int:
    here = Path(__file__).resolve().parent if len(sys.argv) < 2 else Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/out")
    jobs = json.loads((here / "jobs.json").read_text())
    work = Path("/tmp/tier")
    work.mkdir(parents=True, exist_ok=True)
    (work / "stock-guest.elf").write_bytes(guest_payload.build(repeat_last_pass=True).elf())
    results: dict[str, Any] = {"verify": {}, "saved": {}, "resumed": {}, "stock_saved": {}, "stock_resumed": {}, "errors": []}
    node = collect(jobs["node"], Sources(root=Path("/"), machine=os.uname().machine, guest=kvm_session.LinuxKvm))
    results["profile"] = to_dict(node)
    started = time.monotonic()
    if jobs.get("verify_self"):  # by hand: this host's own view, whatever it is
        jobs.setdefault("verify", []).append({"id": "self", "model": {k: f"{v:#x}" for k, v in node.registers.items()}, "record": True})
        jobs.setdefault("save", []).append({"id": "self", "model": {k: f"{v:#x}" for k, v in node.registers.items()}})
    for job in jobs.get("verify", []):
        model = _regs(job["model"])
        session: kvm_session.KvmSession = kvm_session.LinuxKvm()
        recorder = kvm_session.Recorder(session) if job.get("record") else None
        try:
            guest, result = verify_cmd.verify_on(node, model, recorder or session)
        except (ProbeError, OSError) as exc:
            results["errors"].append(f"verify {job['id']}: {exc}")
            continue
        doc = verify_cmd.report(node, model, guest, result)
        if recorder is not None:
            doc["conversation"] = recorder.recording()
        results["verify"][job["id"]] = doc
    results["verify_seconds"] = time.monotonic() - started
    for job in jobs.get("save", []):
        session = kvm_session.LinuxKvm()
        try:
            guest = kvm_verify.start(session, _regs(job["model"]), node.registers)
            results["saved"][job["id"]] = kvm_verify.save(session, guest).to_json()
        except (ProbeError, OSError) as exc:
            results["errors"].append(f"save {job['id']}: {exc}")
        finally:
            session.close()
    for job in jobs.get("resume", []):
        saved = kvm_verify.Saved.from_json(json.loads((here / job["file"]).read_text()))
        session = kvm_session.LinuxKvm()
        try:
            resumed = kvm_verify.resume(session, saved, node.registers)
        except ProbeError as exc:  # the vCPU cannot even be made like the source's (e.g. no SVE here): refused
            resumed = kvm_verify.Resumed(identity_cap="not reached", answers={0: "not written"}, run_error=str(exc))
        try:
            results["resumed"][job["id"]] = {
                "identity_cap": resumed.identity_cap, "run_error": resumed.run_error, "exits": resumed.exits,
                "refused": {("vCPU" if k == 0 else kvm_verify.register_name(k)): v for k, v in sorted(resumed.refused.items())},
                "reads": None if resumed.reads is None else {k: f"{v:#018x}" for k, v in resumed.reads.items()},
                "source_reads": {k: f"{v:#018x}" for k, v in saved.reads.items()},
            }
        except OSError as exc:
            results["errors"].append(f"resume {job['id']}: {exc}")
        finally:
            session.close()
    if jobs.get("stock_save"):
        try:
            results["stock_saved"]["self"] = stock_save(work, out / "stock.mig")
        except (OSError, RuntimeError, ValueError) as exc:
            results["errors"].append(f"stock save: {exc}")
    for job in jobs.get("stock_resume", []):
        try:
            results["stock_resumed"][job["id"]] = stock_resume(work, here / job["file"])
        except (OSError, RuntimeError, ValueError) as exc:
            results["errors"].append(f"stock resume {job['id']}: {exc}")
    results["seconds"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
