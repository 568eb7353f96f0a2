"""The agent's verifications: each model its node's pools use, verified once per kernel boot.

The operator counts a node compatible with a revision only when this node's kernel accepted the
revision's registers and a guest read them back (``--kernel-verification Required``). Each
verification costs a scratch VM (a fraction of a second on hardware), so verdicts are cached by
(model, kernel boot): a new revision, a new live revision or a reboot asks again; an unchanged
cluster never does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from armcpu.profile import Profile
from armcpu.verification import KernelVerdict
from node_agent import verify_cmd
from node_agent.plan import Target
from node_agent.probes import kvm_session

log = logging.getLogger(__name__)

SessionFactory = Callable[[Target], kvm_session.KvmSession | None]


def boot_id(root: Path) -> str:
    """This kernel boot's id; '' where the kernel does not say (a verdict then lasts for the agent's life)."""
    try:
        return (root / "proc/sys/kernel/random/boot_id").read_text().strip()[:64]
    except OSError:
        return ""


def real_sessions(root: Path) -> SessionFactory:
    return lambda _target: kvm_session.LinuxKvm(root)


def replayed_sessions(recording: Mapping[str, Any], source: str) -> SessionFactory:
    """Sessions from a recording: ``{"verify": conversation, "model": {"registers": ...}}`` (one model, as
    ``armcpu-agent verify --kvm-record`` writes) or ``{"verifications": {key: conversation}}``. A model
    the recording has no conversation for gets no verdict (the operator reports the node pending)."""
    by_key: dict[str, Any] = dict(recording.get("verifications") or {})
    model = recording.get("model")
    if "verify" in recording and isinstance(model, Mapping) and isinstance(model.get("registers"), Mapping):
        from armcpu.profile import from_dict
        from armcpu.verification import verification_key

        by_key[verification_key(from_dict({"registers": dict(model["registers"])}, source).registers)] = recording["verify"]

    def factory(target: Target) -> kvm_session.KvmSession | None:
        conversation = by_key.get(target.key)
        return None if conversation is None else kvm_session.Replay(conversation, f"{source} ({target.key})")

    return factory


class Verifier:
    """Verdicts for targets, cached by (verification key, boot id)."""

    def __init__(self, sessions: SessionFactory | None, boot: str) -> None:
        self.sessions = sessions
        self.boot = boot
        self.cache: dict[tuple[str, str], KernelVerdict] = {}
        self.ran = 0  # verifications actually run (for tests and metrics)
        self.fresh: list[KernelVerdict] = []  # the verdicts the last call had to ask the kernel for

    def verdicts(self, node: Profile, targets: Sequence[Target]) -> tuple[KernelVerdict, ...]:
        out = []
        self.fresh = []
        for target in targets:
            found = self.cache.get((target.key, self.boot))
            if found is None:
                found = self._verify(node, target)
                if found is None:
                    continue
                self.cache[(target.key, self.boot)] = found
                self.fresh.append(found)
            out.append(found)
        return tuple(out)

    def _verify(self, node: Profile, target: Target) -> KernelVerdict | None:
        if self.sessions is None or node.probe != "kvm":
            return None
        session = self.sessions(target)
        if session is None:
            return None
        self.ran += 1
        model = dict(target.registers)
        _, result = verify_cmd.verify_on(node, model, session)
        predicted = result.predicted
        found = KernelVerdict.of(target.key, result, self.boot, target.model, target.revision)
        if result.agrees_with_prediction is False:
            log.error("the kernel and armcpu's rules disagree", extra={"model": target.model, "revision": target.revision,
                                                                        "predicted": predicted, "accepted": result.accepted,
                                                                        "disagreements": list(found.disagreements)})
        else:
            log.info("verified", extra={"model": target.model, "revision": target.revision, "ok": found.ok})
        return found

