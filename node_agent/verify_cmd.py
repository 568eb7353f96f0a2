"""``armcpu-agent verify --model FILE``: ask this node's kernel whether it runs a model, and let a guest confirm it.

Exit 0 only when KVM accepted every register of the model and the guest read exactly the model;
1 when it did not (each refused or differing field is named); 2 when the question could not be
asked (no /dev/kvm, an unreadable model, a recording that does not match).

FILE is ``armcpu baseline -o json`` output, a CpuModel's ``status.model`` (or the whole CpuModel
object), or a profile (its registers are the model). Beside the kernel's verdict the output shows
armcpu's prediction (``can_run`` on this node's probed profile): when the two differ, armcpu's
rules are wrong for this kernel, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from armcpu.model import Model, can_run
from armcpu.profile import Profile, ProfileError, from_dict, hex64
from armcpu.verification import Verdict, verdict, verification_key
from node_agent.collect import NotArm64, Sources, collect
from node_agent.probes import ProbeError, kvm_replay, kvm_session, kvm_verify


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="armcpu-agent verify", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", required=True, type=Path, metavar="FILE",
                   help="`armcpu baseline -o json` output, a CpuModel's status.model, or a profile")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname())
    p.add_argument("--host-root", type=Path, default=Path(os.environ.get("ARMCPU_HOST_ROOT", "/")))
    p.add_argument("--kvm-record", type=Path, default=None, help="also write the probe's and the verifier's KVM conversations here")
    p.add_argument("--kvm-replay", type=Path, default=None, help="answer from a conversation --kvm-record wrote, instead of /dev/kvm")
    return p.parse_args(argv)


class VerifyError(Exception):
    pass


def model_registers(data: object, source: str) -> dict[str, int]:
    """The registers of a model document, in any of the shapes ``--model`` takes."""
    if isinstance(data, Mapping) and isinstance(data.get("status"), Mapping) and "model" in data["status"]:
        data = data["status"]["model"]  # a whole CpuModel object
    elif isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]  # armcpu baseline -o json
    if not isinstance(data, Mapping) or not isinstance(data.get("registers"), Mapping):
        raise VerifyError(f"{source}: no model registers (expected `armcpu baseline -o json` output, a CpuModel or its status.model)")
    try:
        return dict(from_dict({"registers": data["registers"]}, source).registers)
    except ProfileError as exc:
        raise VerifyError(str(exc)) from None


def verify_on(node: Profile, model: dict[str, int], session: kvm_session.KvmSession) -> tuple[kvm_verify.Guest, Verdict]:
    """Predict, then ask the kernel: start the guest with the model and compare what it read. A vCPU
    that cannot even be set up for the model (it needs SVE, which this node's KVM lacks) is the
    kernel's refusal too, with the reason as the run error."""
    predicted = can_run(node, Model(registers=model)).ok
    try:
        guest = kvm_verify.start(session, model, node.registers)
    except (ProbeError, OSError) as exc:
        guest = kvm_verify.Guest(features=kvm_verify.wanted_features(model), identity_cap="not reached",
                                 answers=dict.fromkeys(model, "not written"), run_error=str(exc))
    finally:
        try:
            session.close()
        except OSError:
            pass
    return guest, verdict(model, node.registers, guest.answers, guest.reads, guest.run_error, predicted)


def report(node: Profile, model: dict[str, int], guest: kvm_verify.Guest, result: Verdict) -> dict[str, Any]:
    """The JSON document ``-o json`` prints (and the agent publishes, in part)."""
    prediction = can_run(node, Model(registers=model))
    return {
        "node": node.name,
        "kernel": node.kernel,
        "model": {"fingerprint": Model(registers=model).fingerprint, "key": verification_key(model),
                  "midr": f"0x{model.get('MIDR_EL1', 0):08x}"},
        "predicted": prediction.ok,
        "prediction": [r.message() for r in prediction.refusals],
        "accepted": result.accepted,
        "guest_read_matches": result.guest_read_matches,
        "ok": result.ok,
        "agrees_with_prediction": result.agrees_with_prediction,
        "vcpu": {"features": list(guest.features), "writable_imp_id_regs": guest.identity_cap},
        "run": {"error": guest.run_error, "exits": guest.exits},
        "registers": [
            {"name": a.name, "written": hex64(a.written), "answer": a.answer,
             "guest_read": None if a.guest_read is None else hex64(a.guest_read)}
            for a in result.answers
        ],
        "disagreements": [d.message() for d in result.disagreements()],
    }


def _text(doc: Mapping[str, Any]) -> str:
    lines = [f"node {doc['node']} (Linux {doc['kernel']}), model {doc['model']['fingerprint']}, "
             f"vCPU features {', '.join(doc['vcpu']['features'])}, identity cap {doc['vcpu']['writable_imp_id_regs']}"]
    verdict_word = "accepted every register" if doc["accepted"] else "refused some registers"
    read = {True: "the guest read exactly the model", False: "the guest read something else", None: "no guest read-back"}[doc["guest_read_matches"]]
    lines.append(f"KVM {verdict_word}; {read}; armcpu predicted {'yes' if doc['predicted'] else 'no'}"
                 + ("" if doc["agrees_with_prediction"] in (True, None) else " -- armcpu's rules disagree with this kernel"))
    if doc["run"]["error"]:
        lines.append(f"run: {doc['run']['error']}")
    lines += [f"  {d}" for d in doc["disagreements"]]
    if not doc["predicted"]:
        lines += [f"  predicted refusal: {r}" for r in doc["prediction"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        model = model_registers(_read_json(args.model), str(args.model))
        probe_backend, session = _backends(args)
        recorded = _read_json(args.kvm_replay) if args.kvm_replay else {}
        sources = Sources(root=args.host_root, machine="aarch64" if args.kvm_replay else os.uname().machine, kvm=probe_backend,
                          guest=None if args.kvm_replay else (lambda: kvm_session.LinuxKvm(args.host_root)))
        node = collect(args.node_name, sources)
        if args.kvm_replay:  # the recorded node's kernel and guest view (measured there), not this machine's
            guest_view = recorded.get("guest_view")
            node = replace(node, kernel=recorded.get("kernel"),
                           guest_view=None if guest_view is None else model_registers({"registers": guest_view}, f"{args.kvm_replay}: guest_view"))
        if node.probe != "kvm":
            raise VerifyError(f"this node has no usable KVM ({'; '.join(sources.skipped) or node.probe}): nothing to verify with")
        guest, result = verify_on(node, model, session)
    except (VerifyError, ProbeError, NotArm64, OSError) as exc:
        print(f"armcpu-agent verify: {exc}", file=sys.stderr)
        return 2
    if args.kvm_record:
        assert isinstance(probe_backend, kvm_replay.Recorder) and isinstance(session, kvm_session.Recorder)
        recording = {"kernel": node.kernel,
                     "guest_view": None if node.guest_view is None else {k: hex64(v) for k, v in node.guest_view.items()},
                     "model": {"registers": {k: hex64(v) for k, v in model.items()}},
                     "probe": probe_backend.recording(), "verify": session.recording()}
        args.kvm_record.write_text(json.dumps(recording, indent=1) + "\n")
    doc = report(node, model, guest, result)
    sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.output == "json" else _text(doc))
    return 0 if result.ok else 1


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{path}: cannot read: {exc}") from None


def _backends(args: argparse.Namespace) -> tuple[Any, kvm_session.KvmSession]:
    if args.kvm_replay:
        data = _read_json(args.kvm_replay)
        if not isinstance(data, Mapping) or "verify" not in data or "probe" not in data:
            raise VerifyError(f"{args.kvm_replay}: holds no verifier conversation (an `armcpu-agent --once --kvm-record` file has only "
                              "the probe's); record one on the node with `armcpu-agent verify --kvm-record FILE`")
        return (kvm_replay.Replay(data["probe"], f"{args.kvm_replay} (probe)"),
                kvm_session.Replay(data["verify"], f"{args.kvm_replay} (verify)"))
    real: kvm_session.KvmSession = kvm_session.LinuxKvm(args.host_root)
    if args.kvm_record:
        return kvm_replay.Recorder(), kvm_session.Recorder(real)
    return None, real
