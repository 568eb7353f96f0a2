"""Kubernetes label selectors, evaluated in memory (the operator matches Nodes from its index).

Semantics follow ``metav1.LabelSelector``: matchLabels and matchExpressions are ANDed; ``In`` and
``NotIn`` need values, ``Exists`` and ``DoesNotExist`` must have none. One deliberate difference:
an empty selector selects *nothing* here, because for a CPU pool "every node" is never what a user
meant (the CRD rejects it at admission too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SelectorError(ValueError):
    pass


def check(selector: Mapping[str, Any], where: str = "nodeSelector") -> list[str]:
    errors = []
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not match_labels and not exprs:
        errors.append(f"{where}: empty selector; name the pool with matchLabels or matchExpressions")
    for i, expr in enumerate(exprs):
        op, values = expr.get("operator"), expr.get("values") or []
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
