"""Reading back what the operator writes in a CpuModel's status: the operator itself (the revision in
effect, older live revisions) and ``kubectl armcpu`` (``why``) read a model the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from armcpu.model import Model
from armcpu.profile import Core


def model_from_status(data: Mapping[str, Any]) -> Model:
    """``status.model`` (or a ``status.liveRevisions`` entry) as a model: hex registers, implementations, members."""
    regs = {k: int(v, 16) for k, v in (data.get("registers") or {}).items()}
    targets = tuple(Core(midr=int(t["midr"], 16), revidr=int(t["revidr"], 16), aidr=int(t["aidr"], 16)) for t in data.get("implementations") or [])
    return Model(registers=regs, targets=targets, members=tuple(data.get("members") or ()))
