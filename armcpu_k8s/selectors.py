"""Kubernetes label selectors, evaluated in memory (the operator matches Nodes from its index).

Semantics follow ``metav1.LabelSelector``: matchLabels and matchExpressions are ANDed; ``In`` and
``NotIn`` need values, ``Exists`` and ``DoesNotExist`` must have none. One deliberate difference:
an empty selector selects *nothing* here, because for a CPU pool "every node" is never what a user
meant (the CRD rejects it at admission too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Kubernetes' label syntax (apimachinery validation.IsQualifiedName / IsValidLabelValue): a name of at
# most 63 characters, alphanumeric at both ends with '-', '_' and '.' inside, after an optional DNS
# subdomain prefix of at most 253 characters and a '/'. A value is such a name, or empty.
_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SelectorError(ValueError):
    pass


def key_error(key: object) -> str | None:
    """Why ``key`` is not a label key, or None. A selector on a key no object can carry selects
    nothing, silently: the API server would refuse such a key on any object, so armcpu refuses it in
    the selector, where the user can still see the typo."""
    if not isinstance(key, str):
        return f"label key {key!r} is not a string"
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and len(prefix) <= 253 and _SUBDOMAIN.fullmatch(prefix)):
        return f"label key {key!r:.80}: the prefix before '/' must be a DNS subdomain (lower case, at most 253 characters)"
    if not name or len(name) > 63 or not _NAME.fullmatch(name):
        return (f"label key {key!r:.80}: the name must be 1-63 characters, alphanumeric at both ends, "
                "with '-', '_' or '.' between")
    return None


def value_error(value: object) -> str | None:
    """Why ``value`` is not a label value (at most 63 characters, empty or alphanumeric at both ends), or None."""
    if not isinstance(value, str):
        return f"label value {value!r} is not a string"
    if len(value) > 63 or not _NAME.fullmatch(value):
        return f"label value {value!r:.80}: at most 63 characters, empty or alphanumeric at both ends with '-', '_' or '.' between"
    return None


def check(selector: Mapping[str, Any], where: str = "nodeSelector") -> list[str]:
    errors = []
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not match_labels and not exprs:
        errors.append(f"{where}: empty selector; name the pool with matchLabels or matchExpressions")
    for key, value in match_labels.items():
        problem = key_error(key) or value_error(value)
        if problem:
            errors.append(f"{where}.matchLabels[{key!r:.80}]: {problem}")
    for i, expr in enumerate(exprs):
        op, values = expr.get("operator"), expr.get("values") or []
        problem = key_error(expr.get("key")) or next((e for e in map(value_error, values) if e), None)
        if problem:
            errors.append(f"{where}.matchExpressions[{i}]: {problem}")
        if op in ("In", "NotIn") and not values:
            errors.append(f"{where}.matchExpressions[{i}]: operator {op} needs at least one value")
        elif op in ("Exists", "DoesNotExist") and values:
            errors.append(f"{where}.matchExpressions[{i}]: operator {op} takes no values")
        elif op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            errors.append(f"{where}.matchExpressions[{i}]: unknown operator {op!r} (In, NotIn, Exists, DoesNotExist)")
    return errors


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy ``selector``; a malformed selector (an object written around the
    schema) selects nothing rather than failing the caller, which is reconciling something else."""
    try:
        return _matches(selector, labels)
    except (AttributeError, TypeError, KeyError):
        return False


def _matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not match_labels and not exprs:
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in exprs:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False  # an operator nobody defined selects nothing (it used to select every node)
    return True
