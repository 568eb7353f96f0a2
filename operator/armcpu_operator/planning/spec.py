"""A CpuModel's spec, read into what the core needs, with every problem named by its spec path.

The validating webhook and the reconciler both call :func:`parse`, so a CpuModel created while the
webhook was down is reported ``Invalid`` with the very message ``kubectl apply`` would have shown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from armcpu import catalog, model, named_models
from armcpu_k8s import api, selectors


@dataclass(frozen=True)
class Request:
    selector: Mapping[str, Any]
    vm_selector: Mapping[str, Any] | None
    base: named_models.NamedModel | None
    feature_settings: Mapping[str, str]
    register_settings: Mapping[str, int]  # "REGISTER.FIELD" -> value
    policy: str
    spec_hash: str
    identity_from: str | None = None
    enforcement: str = "Scheduling"
    errors: tuple[str, ...] = field(default=())
    typed: api.CpuModelSpec | None = None  # the spec as the API types read it (None when it does not fit them)

    @property
    def valid(self) -> bool:
        return not self.errors


def spec_hash(spec: object) -> str:
    """A stable hash of what the user asked for; a new value means a new revision is due."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":"), default=repr).encode()).hexdigest()[:16]


def applied_spec(spec: Mapping[str, Any], status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The spec in effect: the one the current revision was computed from. A spec change that is
    invalid, or whose pool cannot be combined, is not in effect (its selectors included) until a
    reconcile computes a revision from it; until then the previous revision keeps its own spec.

    ``status.appliedSpec`` records it; a status written before that field existed names it by
    ``specHash`` only, so the spec counts as applied exactly when its hash matches."""
    recorded = status.get("appliedSpec")
    if recorded is not None:
        return dict(recorded)
    if status.get("model") and status.get("specHash") == spec_hash(spec):
        return spec
    return None


def _typed(spec: object) -> api.CpuModelSpec | list[str]:
    """The spec read by the very types the CRD schema is generated from, or what does not fit them:
    the API server enforces them at admission, but an object written around it (or an older schema)
    must still come out as a named error, not a crash."""
    if not isinstance(spec, Mapping):
        return [f"spec: expected an object, got {type(spec).__name__}"]
    try:
        return api.CpuModelSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        out = []
        for err in exc.errors():
            path = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            out.append(f"{path}: {err['msg']} (got {err['input']!r:.60})")
        return out


def parse(spec: Mapping[str, Any]) -> Request:
    typed = _typed(spec)
    structure = typed if isinstance(typed, list) else []
    if structure:
        return Request(selector={}, vm_selector=None, base=None, feature_settings={}, register_settings={}, policy="Pinned",
                       spec_hash=spec_hash(spec), errors=tuple(structure))
    errors: list[str] = []
    selector = spec.get("nodeSelector") or {}
    errors += [f"spec.{e}" for e in selectors.check(selector)]
    vm_selector = spec.get("vmSelector")
    if vm_selector is not None:
        errors += [f"spec.{e}" for e in selectors.check(vm_selector, "vmSelector")]

    base = None
    if spec.get("base"):
        try:
            base = named_models.lookup(str(spec["base"]))
        except KeyError as exc:
            errors.append(f"spec.base: {exc.args[0]}")

    feature_settings = {str(k): str(v) for k, v in (spec.get("features") or {}).items()}
    register_settings: dict[str, int] = {}
    paths: dict[str, str] = {}
    for i, item in enumerate(spec.get("registers") or []):
        where = f"spec.registers[{i}]"
        reg_name, field_name, value = item.get("register"), item.get("field"), item.get("value")
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{where}.value: expected an integer, got {value!r}")
            continue
        try:
            reg = catalog.register(str(reg_name))
        except KeyError:
            listed = any("unknown register" in e for e in errors)  # the known registers are listed once, not per entry
            known = "listed above" if listed else ", ".join(sorted(catalog.registers()))
            errors.append(f"{where}.register: unknown register {reg_name!r}; known: {known}")
            continue
        try:
            fld = reg.field(str(field_name))
        except KeyError:
            errors.append(f"{where}.field: {reg.name} has no field {field_name!r}; its fields: {', '.join(f.name for f in reg.fields)}")
            continue
        ref = fld.qualified
        if ref in register_settings:
            errors.append(f"{where}: {ref} is set twice")
            continue
        register_settings[ref] = value
        paths[f"registers.{ref}"] = f"{where} ({ref})"

    for err in model.validate_settings(feature_settings, register_settings):
        where = paths.get(err.setting, f"spec.{err.setting}")
        errors.append(f"{where}: {err.reason}")

    assert isinstance(typed, api.CpuModelSpec)
    return Request(
        selector=selector,
        vm_selector=vm_selector,
        base=base,
        feature_settings=feature_settings,
        register_settings=register_settings,
        policy=typed.updatePolicy,
        identity_from=typed.identityFrom or None,
        enforcement=typed.enforcement,
        spec_hash=spec_hash(spec),
        errors=tuple(errors),
        typed=typed,
    )
