"""The CRDs in crds/ and in the chart are exactly what armcpu_k8s/api.py generates."""

from __future__ import annotations

import yaml

from armcpu_k8s import crdgen


def test_generated_crds_match_the_committed_files() -> None:
    stale = [str(p) for p, text in crdgen.expected_files().items() if not p.exists() or p.read_text() != text]
    assert stale == [], f"regenerate with `python -m armcpu_k8s.crdgen --write`: {stale}"


def test_crds_are_structural() -> None:
    """Every object node has properties or additionalProperties; every node has a type."""

    def walk(node: dict, path: str) -> None:  # type: ignore[type-arg]
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        assert "$ref" not in node and "anyOf" not in node, path
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    for crd in crdgen.CRDS:
        doc = yaml.safe_load(crdgen.render(crd))
        for version in doc["spec"]["versions"]:
            walk(version["schema"]["openAPIV3Schema"], crd.kind)


def test_no_other_files_in_crds_dirs() -> None:
    expected = set(crdgen.expected_files())
    for out in crdgen.OUTPUTS:
        extra = [p for p in out.glob("*.yaml") if p not in expected]
        assert extra == [], f"unexpected CRD files: {extra}"
