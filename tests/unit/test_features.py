"""The FEAT map against an independent table, and the generated data against Features.json."""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys

import pytest

from armcpu import catalog, features
from tests.helpers import REFERENCE, REPO


def plain_reference_rows() -> list[dict[str, str]]:
    with (REFERENCE / "feat_map.csv").open() as fh:
        return [
            r for r in csv.DictReader(fh)
            if not any(tag in r["notes"] for tag in ("[compound]", "[exact]", "[one-way]", "UNCERTAIN", "[derived]"))
        ]


def _comparisons(cond: features.Cond | None) -> set[tuple[str, str, str, int]]:
    if cond is None:
        return set()
    if cond[0] in ("ge", "eq", "lt"):
        return {(cond[0], cond[1], cond[2], cond[3])}
    if cond[0] in ("and", "or"):
        return _comparisons(cond[1]) | _comparisons(cond[2])
    if cond[0] == "implies":
        return _comparisons(cond[2])
    return set()


def test_every_reference_encoding_is_part_of_the_feature() -> None:
    """Each plain row FEAT <-> REG.FIELD >= N of the reference is one of the feature's conditions
    (AArch32 views excepted where the feature has an AArch64 definition)."""
    problems = []
    checked = 0
    for row in plain_reference_rows():
        try:
            fld = catalog.field(row["register"], row["field"])
        except KeyError:
            continue  # a non-ID register (trace, SPE): not a guest-visible feature
        feat = features.all_features().get(row["feature"])
        if feat is None or feat.cond is None:
            problems.append(f"{row['feature']}: no register encoding here")
            continue
        comparisons = _comparisons(feat.cond)
        aarch32_view = "AArch32 view" in row["notes"]
        want = ("ge", fld.register, fld.name, int(row["min_value"], 0))
        if want not in comparisons and not (aarch32_view and any(c[1].startswith("ID_AA64") for c in comparisons)):
            problems.append(f"{row['feature']}: {want} not in {sorted(comparisons)}")
        checked += 1
    assert problems == []
    assert checked >= 190


def test_about_190_features_are_one_field_value() -> None:
    single = [f for f in features.all_features().values() if f.single_field is not None]
    assert 180 <= len(single) <= 260


def test_multi_valued_fields_are_exact() -> None:
    aes = catalog.field("ID_AA64ISAR0_EL1", "AES")
    assert features.feature_names_for_field(aes) == [("FEAT_AES", 1), ("FEAT_PMULL", 2)]
    regs = {"ID_AA64ISAR0_EL1": aes.insert(0, 1), "ID_AA64PFR0_EL1": 0x11}
    assert "FEAT_AES" in features.decode(regs) and "FEAT_PMULL" not in features.decode(regs)


def test_dependency_only_and_unknown_features_are_refused_clearly() -> None:
    with pytest.raises(features.UnknownFeature, match="defined only through other features"):
        features.lookup("FEAT_Crypto")
    with pytest.raises(features.UnknownFeature, match="unknown feature"):
        features.lookup("FEAT_WARP_DRIVE")
    with pytest.raises(features.UnknownFeature, match="cannot be controlled for a guest"):
        features.lookup(next(iter(features.NON_ID)))
    assert features.lookup("sve").name == "FEAT_SVE"


def test_generated_feat_data_is_fresh(tmp_path: object) -> None:
    before = (REPO / "armcpu/feat_data.py").read_text()
    subprocess.run([sys.executable, str(REPO / "scripts/gen_feat_map.py")], check=True, cwd=REPO)
    after = (REPO / "armcpu/feat_data.py").read_text()
    assert before == after, "armcpu/feat_data.py is stale: run scripts/gen_feat_map.py and commit"
    importlib.reload(importlib.import_module("armcpu.feat_data"))
    assert "Copyright (c) 2010-2025 Arm Limited" in after
