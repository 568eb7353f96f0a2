"""The truth matrix: every model armcpu would build from the emulated hosts, written into each
host's real KVM and read back by a guest, beside armcpu's prediction; and guests moved between
hosts, by armcpu's verifier and by stock QEMU.

Three boots per host, two hosts at a time (``emulated.boot_all``):

1. **probe**: the agent's probe (the existing tier: :data:`emulated.RUN_SH`) -- each host's profile;
2. **verify and save**: every model verified on the host (its own view; the common model of it and
   every other host on the same kernel; of it and the same CPU on the other kernel; every other
   host's raw view), and the guests it sends away saved (its raw view; each pool model armcpu says
   both members run; a stock-QEMU guest);
3. **resume**: every guest saved on a related host (the same kernel, or the same CPU on the other
   kernel) and on this host itself (in its previous boot: the control) restored and resumed here.

``python -m armcpu_testing.truth --record-into tests/fixtures/kvm/emulated`` measures it all and
writes ``truth-matrix.json`` and ``guest-moves.json``; the emulated tier re-measures and compares.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armcpu.migration import can_move, stock_destination
from armcpu.model import Model, can_run, combine, model_of
from armcpu.profile import Profile, from_dict, hex64
from armcpu.verification import verification_key
from armcpu_testing import emulated

CPUS = ["cortex-a72", "cortex-a76", "neoverse-n1", "neoverse-v1", "neoverse-n2", "max"]
MOVE_OUT_BYTES = 256 << 20

DRIVER_SH = """#!/bin/sh
set -u
out=/tmp/out
mkdir -p $out
export PYTHONPATH=/opt/armcpu/site
uname -r > $out/kernel
python3 /opt/armcpu/site/armcpu_testing/tier_driver.py /opt/armcpu $out > $out/driver.log 2>&1
echo $? > $out/driver.rc
dmesg > $out/dmesg
tar -cf /dev/vdc -C $out .
sync
"""

Host = tuple[str, str]  # (QEMU CPU model, kernel release)


@dataclass(frozen=True)
class Job:
    """One model to verify on one host: where it came from, and what it is."""

    id: str
    kind: str  # own | pair | cross-kernel-pair | raw-view
    members: tuple[str, ...]
    registers: Mapping[str, int]


def _hosts_by_name(profiles: Mapping[Host, Profile]) -> dict[str, Host]:
    return {emulated.node_name(*h): h for h in profiles}


def verify_jobs(profiles: Mapping[Host, Profile]) -> dict[Host, list[Job]]:
    """Every (host, model) cell of the matrix, grouped by the host that verifies it."""
    jobs: dict[Host, list[Job]] = {h: [] for h in profiles}
    names = {h: emulated.node_name(*h) for h in profiles}
    for h, p in profiles.items():
        jobs[h].append(Job(f"own:{names[h]}", "own", (names[h],), dict(p.registers)))
        for o, q in profiles.items():
            if o != h:
                jobs[h].append(Job(f"raw:{names[o]}", "raw-view", (names[o],), dict(q.registers)))
    ordered = sorted(profiles, key=lambda h: names[h])
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            same_kernel, same_cpu = a[1] == b[1], a[0] == b[0]
            if not (same_kernel or same_cpu):
                continue
            kind = "pair" if same_kernel else "cross-kernel-pair"
            model = combine([profiles[a], profiles[b]]).model
            job_id = f"{kind}:{names[a]}+{names[b]}"
            for h in (a, b):
                jobs[h].append(Job(job_id, kind, (names[a], names[b]), dict(model.registers)))
    return jobs


def _recorded(job: Job) -> bool:
    """Cells whose KVM conversation is kept for replay: each host's own view, and the raw view of `max` (refused nearly everywhere)."""
    return job.kind == "own" or job.id.startswith("raw:max-")


def _encode(registers: Mapping[str, int]) -> dict[str, str]:
    return {k: hex64(v) for k, v in sorted(registers.items())}


def _work(jobs: Mapping[str, Any], files: Iterable[tuple[str, bytes]] = ()) -> emulated.Work:
    return emulated.Work(run_sh=DRIVER_SH, files=(("jobs.json", json.dumps(jobs).encode()), *files), out_bytes=MOVE_OUT_BYTES)


def _results(run: emulated.Run) -> dict[str, Any]:
    if "results.json" not in run.files:
        log = run.files.get("driver.log", b"").decode(errors="replace")
        raise RuntimeError(f"{emulated.node_name(run.cpu, run.kernel)}: the tier driver wrote no results: {log[-3000:]} {run.console[-2000:]}")
    data: dict[str, Any] = json.loads(run.files["results.json"])
    return data


def _related(a: Host, b: Host) -> bool:
    """Hosts a guest moves between in the tier: the same kernel, or the same CPU on the other kernel."""
    return a[1] == b[1] or a[0] == b[0]


def _pair_partners(profiles: Mapping[Host, Profile], h: Host) -> list[Host]:
    """Related hosts whose common model with ``h`` armcpu says both run."""
    out = []
    for o in profiles:
        if o == h or not _related(o, h):
            continue
        a, b = sorted((h, o), key=lambda x: emulated.node_name(*x))
        model = combine([profiles[a], profiles[b]]).model
        if can_run(profiles[a], model).ok and can_run(profiles[b], model).ok:
            out.append(o)
    return out


def move_model(profiles: Mapping[Host, Profile], save_id: str, source: Host) -> Model:
    """The model a saved guest was started with: the source's own view, or a pool's common model."""
    if save_id.startswith("raw:"):
        return model_of(profiles[source])
    names = save_id.split(":", 1)[1].split("+")
    hosts = _hosts_by_name(profiles)
    return combine([profiles[hosts[n]] for n in names]).model


def measure(guest: emulated.Guest, workdir: Path, profiles: Mapping[Host, Profile]) -> dict[str, Any]:
    """Phases 2 and 3 on hosts whose phase-1 ``profiles`` are known; the matrix and the moves."""
    names = {h: emulated.node_name(*h) for h in profiles}
    by_host = verify_jobs(profiles)
    partners = {h: _pair_partners(profiles, h) for h in profiles}
    phase2: dict[Host, emulated.Work] = {}
    for h, jobs in by_host.items():
        saves = [{"id": f"raw:{names[h]}", "model": _encode(profiles[h].registers)}]
        for o in partners[h]:
            a, b = sorted((h, o), key=lambda x: names[x])
            model = combine([profiles[a], profiles[b]]).model
            saves.append({"id": f"pair:{names[a]}+{names[b]}", "model": _encode(model.registers)})
        phase2[h] = _work({"node": names[h], "stock_save": True, "save": saves,
                           "verify": [{"id": j.id, "model": _encode(j.registers), "record": _recorded(j)} for j in jobs]})
    runs2 = emulated.boot_all(guest, sorted({h[0] for h in profiles}), workdir / "phase2", work=phase2)
    return phase3(guest, workdir, profiles, by_host, runs2)


def phase3(guest: emulated.Guest, workdir: Path, profiles: Mapping[Host, Profile], by_host: Mapping[Host, list[Job]],
           runs2: Mapping[Host, emulated.Run]) -> dict[str, Any]:
    names = {h: emulated.node_name(*h) for h in profiles}
    results2 = {h: _results(r) for h, r in runs2.items()}

    phase3_work: dict[Host, emulated.Work] = {}
    for b in profiles:
        files: list[tuple[str, bytes]] = []
        resume, stock = [], []
        for a in profiles:  # from every related host, and from itself (a fresh boot: the control)
            if not _related(a, b):
                continue
            for save_id, saved in results2[a]["saved"].items():
                if save_id == f"raw:{names[a]}" or (save_id.startswith("pair:") and names[b] in save_id.split(":", 1)[1].split("+")):
                    file = f"saved-{len(files)}.json"
                    files.append((file, json.dumps(saved).encode()))
                    resume.append({"id": f"{save_id}@{names[a]}", "file": file})
            mig = runs2[a].files.get("stock.mig")
            if mig is not None:
                file = f"stock-{len(files)}.mig"
                files.append((file, mig))
                stock.append({"id": names[a], "file": file})
        phase3_work[b] = _work({"node": names[b], "resume": resume, "stock_resume": stock}, files)
    runs3 = emulated.boot_all(guest, sorted({h[0] for h in profiles}), workdir / "phase3", work=phase3_work)
    return assemble(profiles, by_host, runs2, runs3)


def assemble(profiles: Mapping[Host, Profile], by_host: Mapping[Host, list[Job]], runs2: Mapping[Host, emulated.Run],
             runs3: Mapping[Host, emulated.Run]) -> dict[str, Any]:
    """The matrix and the moves from what the hosts wrote (predictions are computed here, with today's rules)."""
    names = {h: emulated.node_name(*h) for h in profiles}
    results2 = {h: _results(r) for h, r in runs2.items()}
    results3 = {h: _results(r) for h, r in runs3.items()}
    conversations = {(names[h], job_id): (doc["conversation"], {r["name"]: r["written"] for r in doc["registers"]})
                     for h, r in results2.items() for job_id, doc in r["verify"].items() if "conversation" in doc}
    return {"matrix": matrix(profiles, by_host, results2), "moves": moves(profiles, results2, results3), "conversations": conversations,
            "seconds": {"phase2": {names[h]: round(r.seconds, 1) for h, r in runs2.items()},
                        "phase3": {names[h]: round(r.seconds, 1) for h, r in runs3.items()}},
            "errors": {names[h]: r["errors"] for h, r in {**results2, **results3}.items() if r["errors"]}}


def matrix(profiles: Mapping[Host, Profile], by_host: Mapping[Host, list[Job]], results: Mapping[Host, Mapping[str, Any]]) -> dict[str, Any]:
    """The cells, and every model they name (by fingerprint) so that a replay can recompute each prediction."""
    cells = []
    models: dict[str, dict[str, str]] = {}
    for h, jobs in sorted(by_host.items(), key=lambda kv: emulated.node_name(*kv[0])):
        for job in jobs:
            doc = results[h]["verify"].get(job.id)
            # the model as it was written (what the kernel judged), not as today's combine would make it
            written = {r["name"]: int(r["written"], 16) for r in doc["registers"]} if doc is not None else dict(job.registers)
            models[verification_key(written)] = _encode(written)  # the key covers MIDR/REVIDR/AIDR, the fingerprint does not
            cell: dict[str, Any] = {"host": {"cpu": h[0], "kernel": h[1]}, "model": {
                "kind": job.kind, "members": list(job.members), "key": verification_key(written), "fingerprint": model_of_registers(written)}}
            if doc is None:
                cell.update({"predicted": can_run(profiles[h], _model(job.registers)).ok, "accepted": None, "guest_read_matches": None,
                             "error": "not verified"})
            else:
                # "accepted" is the kernel's verdict on the model: every write accepted *and* the guest read it back
                # (a write KVM accepts and ignores is no acceptance of the model); "writes_accepted" the writes alone
                cell.update({k: doc[k] for k in ("predicted", "guest_read_matches", "prediction", "disagreements")})
                cell.update({"accepted": doc["ok"], "writes_accepted": doc["accepted"]})
                cell["vcpu"] = doc["vcpu"]
                cell["refused"] = [r["name"] for r in doc["registers"] if r["answer"] not in ("accepted",)
                                   and not (r["answer"] == "ENOENT" and int(r["written"], 16) == 0)]
                if doc["run"]["error"]:
                    cell["run_error"] = doc["run"]["error"]
            cells.append(cell)
    return {"models": dict(sorted(models.items())), "cells": cells}


def moves(profiles: Mapping[Host, Profile], results2: Mapping[Host, Mapping[str, Any]],
          results3: Mapping[Host, Mapping[str, Any]]) -> dict[str, Any]:
    names = {h: emulated.node_name(*h) for h in profiles}
    hosts = _hosts_by_name(profiles)
    out = []
    for b, res in sorted(results3.items(), key=lambda kv: names[kv[0]]):
        for move_id, r in sorted(res["resumed"].items()):
            save_id, _, source = move_id.rpartition("@")
            a = hosts[source]
            kind = "raw-view" if save_id.startswith("raw:") else "armcpu-model"
            predicted = can_move(profiles[a], profiles[b], move_model(profiles, save_id, a)).ok
            matches = r["reads"] == r["source_reads"] if r["reads"] is not None else None
            out.append({"from": {"cpu": a[0], "kernel": a[1]}, "to": {"cpu": b[0], "kernel": b[1]}, "kind": kind, "model": save_id,
                        "predicted": predicted, "result": "ok" if r["reads"] is not None and not r["refused"] else "refused",
                        "guest_reads_match": matches, "error": r["run_error"], "refused_registers": r["refused"]})
        for source, r in sorted(res["stock_resumed"].items()):
            a = hosts[source]
            predicted = can_move(profiles[a], stock_destination(profiles[b]), model_of(profiles[a])).ok
            sent = results2[a]["stock_saved"].get("self", {})
            matches = None if r["reads"] is None else r["reads"] == sent.get("reads")
            out.append({"from": {"cpu": a[0], "kernel": a[1]}, "to": {"cpu": b[0], "kernel": b[1]}, "kind": "stock-qemu",
                        "predicted": predicted, "result": "ok" if r["status"] == "completed" else "refused",
                        "guest_reads_match": matches,
                        "error": None if r["status"] == "completed" else (r["qemu_output"] or r["error"])})
    return {"moves": out}


def _model(registers: Mapping[str, int]) -> Model:
    return Model(registers=dict(registers))


def model_of_registers(registers: Mapping[str, int]) -> str:
    return str(_model(registers).fingerprint)


def probe_all(guest: emulated.Guest, workdir: Path, cpus: list[str]) -> tuple[dict[Host, emulated.Run], dict[Host, Profile]]:
    """Phase 1: the agent's probe on every host."""
    runs = emulated.boot_all(guest, cpus, workdir / "phase1")
    profiles = {}
    for (cpu, kernel), run in runs.items():
        if run.files.get("kvm.rc") != b"0\n":
            raise RuntimeError(f"{cpu} on {kernel}: the probe failed: {run.files.get('kvm.err', b'').decode()} {run.console[-2000:]}")
        profiles[(cpu, kernel)] = from_dict(run.json("kvm.json"), emulated.node_name(cpu, kernel))
    return runs, profiles


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m armcpu_testing.truth", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--cpus", nargs="+", default=CPUS)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--record-into", type=Path, default=None, help="write truth-matrix.json, guest-moves.json and the recordings here")
    p.add_argument("--reassemble", type=Path, default=None, metavar="WORKDIR",
                   help="boot nothing: recompute the matrix and moves (today's rules) from what a kept --workdir holds")
    p.add_argument("--tables", type=Path, default=None, metavar="DIR",
                   help="boot nothing: print the Markdown tables of the recordings in DIR (docs/truth.md shows them)")
    args = p.parse_args(argv)
    if args.reassemble:
        guest = emulated.build_guest()
        hosts = [(cpu, kernel) for kernel in guest.kernels for cpu in args.cpus]
        runs = emulated.runs_in(args.reassemble / "phase1", hosts)
        profiles = {h: from_dict(r.json("kvm.json"), emulated.node_name(*h)) for h, r in runs.items()}
        result = assemble(profiles, verify_jobs(profiles), emulated.runs_in(args.reassemble / "phase2", hosts),
                          emulated.runs_in(args.reassemble / "phase3", hosts))
        if args.record_into:
            for run in runs.values():
                emulated.record(run, guest, args.record_into)
            write_fixtures(result, guest, args.record_into)
        print(json.dumps(summarise(result), indent=1))
        return 0
    if args.tables:
        matrix = json.loads((args.tables / "truth-matrix.json").read_text())
        sys.stdout.write(tables(matrix, json.loads((args.tables / "guest-moves.json").read_text())))
        return 0
    guest = emulated.build_guest()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        runs, profiles = probe_all(guest, workdir, args.cpus)
        result = measure(guest, workdir, profiles)
        if args.record_into:
            for run in runs.values():
                emulated.record(run, guest, args.record_into)
            write_fixtures(result, guest, args.record_into)
    summary = summarise(result)
    print(json.dumps(summary, indent=1))
    return 0


def write_fixtures(result: Mapping[str, Any], guest: emulated.Guest, into: Path) -> None:
    """truth-matrix.json and guest-moves.json, and each kept verifier conversation beside its host's
    probe conversation in the ``armcpu-agent verify --kvm-replay`` format."""
    for (host, job_id), (conversation, registers) in result["conversations"].items():
        probe = json.loads((into / host / "kvm-conversation.json").read_text())
        name = "verify-own.json" if job_id.startswith("own:") else f"verify-{job_id.replace(':', '-')}.json"
        measured = json.loads((into / host / "profile-kvm.json").read_text())
        doc = {"kernel": measured.get("kernel"), "guest_view": measured.get("guest_view"), "model": {"id": job_id, "registers": registers},
               "probe": {k: probe[k] for k in ("calls", "one_reg", "writable_masks") if k in probe}, "verify": conversation}
        (into / host / name).write_text(json.dumps(doc, indent=1) + "\n")
    info = guest.info
    source = {"qemu": info["qemu"], "guest_qemu": info.get("guest_qemu"), "suite": info["suite"], "kernels": info["kernels"]}
    (into / "truth-matrix.json").write_text(json.dumps({"source": source, **result["matrix"]}, indent=1) + "\n")
    (into / "guest-moves.json").write_text(json.dumps({"source": source, **result["moves"]}, indent=1) + "\n")


def summarise(result: Mapping[str, Any]) -> dict[str, Any]:
    cells = result["matrix"]["cells"]
    return {
        "cells": len(cells),
        "agree": sum(1 for c in cells if c["predicted"] == c["accepted"]),
        "accepted": sum(1 for c in cells if c["accepted"]),
        "accepted_read_back_exactly": sum(1 for c in cells if c["accepted"] and c["guest_read_matches"]),
        "disagreeing": [(c["host"], c["model"], c.get("prediction"), c.get("disagreements")) for c in cells if c["predicted"] != c["accepted"]],
        "moves": [(m["kind"], m["from"]["cpu"], m["to"]["cpu"], m["from"]["kernel"], m["predicted"], m["result"], m["guest_reads_match"])
                  for m in result["moves"]["moves"]],
        "errors": result["errors"],
        "seconds": result["seconds"],
    }



def _short(cpu: str) -> str:
    return cpu.replace("cortex-", "").replace("neoverse-", "")


def tables(matrix: Mapping[str, Any], moves: Mapping[str, Any]) -> str:
    """The Markdown tables docs/truth.md shows, from the recorded fixtures (a unit test keeps them equal)."""
    cells = matrix["cells"]
    hosts = sorted({(c["host"]["cpu"], c["host"]["kernel"]) for c in cells}, key=lambda h: (emulated.release_key(h[1]), h[0]))
    out = ["| host (QEMU CPU, Linux) | own view | pool models (same kernel) | same CPU, other kernel | other hosts' raw views "
           "| prediction = kernel |",
           "|---|---|---|---|---|---|"]
    for h in hosts:
        mine = [c for c in cells if (c["host"]["cpu"], c["host"]["kernel"]) == h]

        def count(kind: str, cells_: list[dict[str, Any]] = mine) -> str:
            of = [c for c in cells_ if c["model"]["kind"] == kind]
            return f"{sum(1 for c in of if c['accepted'])} of {len(of)} accepted"

        agree = sum(1 for c in mine if c["predicted"] == c["accepted"])
        out.append(f"| {h[0]}, {h[1]} | {count('own')} | {count('pair')} | {count('cross-kernel-pair')} | {count('raw-view')} | "
                   f"{agree} of {len(mine)} |")
    out.append("")
    rows = moves["moves"]

    def word(m: Mapping[str, Any] | None) -> str:
        if m is None:
            return "·"
        return ("ok" if m["guest_reads_match"] else "ok, reads differ") if m["result"] == "ok" else "refused"

    out.append("Guest moves (row: from, column: to; **ok** = restored, and the guest read what it read before; **refused** = "
               "the destination refused it; · = not tried, because armcpu does not call that pool movable; the diagonal is "
               "each host taking back its own guest after a reboot, the control). Every cell ended as `can_move` predicted.")
    out.append("")
    kinds = (("armcpu-model", "armcpu's pool model (verifier save/restore)"), ("raw-view", "the source's raw view (verifier save/restore)"),
             ("stock-qemu", "stock QEMU 10.0 (`migrate file:` / `-incoming`)"))
    for kind, title in kinds:
        for kernel in sorted({m["from"]["kernel"] for m in rows}, key=emulated.release_key):
            these = [m for m in rows if m["kind"] == kind and m["from"]["kernel"] == kernel == m["to"]["kernel"]]
            if not these:
                continue
            cpus = sorted({m["from"]["cpu"] for m in these} | {m["to"]["cpu"] for m in these})
            out += [f"**{title}, Linux {kernel}**", "", "| from \\ to | " + " | ".join(_short(c) for c in cpus) + " |",
                    "|---|" + "---|" * len(cpus)]
            for a in cpus:
                cells_ = [word(next((m for m in these if m["from"]["cpu"] == a and m["to"]["cpu"] == b), None)) for b in cpus]
                out.append(f"| {_short(a)} | " + " | ".join(cells_) + " |")
            out.append("")
    across = [m for m in rows if m["from"]["kernel"] != m["to"]["kernel"]]
    if across:
        out += ["**Between kernels** (the same CPU, one kernel to the other)", "",
                "| kind | CPU | from | to | result | why |", "|---|---|---|---|---|---|"]
        for m in sorted(across, key=lambda m: (m["kind"], m["from"]["cpu"], emulated.release_key(m["from"]["kernel"]))):
            why = (m["error"] or "").strip().splitlines()
            out.append(f"| {m['kind']} | {m['from']['cpu']} | {m['from']['kernel'].split('+')[0]} | {m['to']['kernel'].split('+')[0]} | "
                       f"{word(m)} | {(why[0] if why else '')[:110].replace('|', '/')} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
