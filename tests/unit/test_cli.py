"""The armcpu CLI as a user runs it: outputs, exit codes, and errors that name file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from armcpu_cli.main import main
from tests.helpers import CPUS, REPO

G3 = str(REPO / "examples/profiles/graviton3-kvm-6.18.json")
G4 = str(REPO / "examples/profiles/graviton4-kvm-6.18.json")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_baseline_json_is_a_model_every_member_can_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "baseline", "--assume-kvm", G3, G4, "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["feasible"]
    assert "FEAT_SM3" not in doc["model"]["features"] and "FEAT_LSE" in doc["model"]["features"]
    assert all(n["can_run"] for n in doc["nodes"].values())
    assert doc["qemu"]["cpu"].startswith("host,")


def test_baseline_feature_off_and_qemu_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "baseline", "--assume-kvm", G3, G4, "--feature", "FEAT_SHA3=off", "-o", "qemu")
    assert code == 0 and "SYSREG_ID_AA64ISAR0_EL1_SHA3=0" in out and out.startswith("-cpu host,")


def test_describe_json_lists_features(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "describe", str(CPUS / "ampere-altra.json"), "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["part"] == "Neoverse-N1" and doc["revision"] == "r3p1"
    assert "FEAT_LSE" in doc["features"] and "FEAT_SVE" not in doc["features"]


def test_check_and_diff(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "baseline", "--assume-kvm", G3, G4, "-o", "json")
    model = tmp_path / "model.json"
    model.write_text(out)
    assert run(capsys, "check", "--assume-kvm", str(model), G3)[0] == 0
    code, out, _ = run(capsys, "check", str(model), G3)  # no masks: only its own view
    assert code == 1 and "only run its own view" in out
    code, out, _ = run(capsys, "diff", G3, G4)
    assert code == 0 and "ID_AA64ISAR0_EL1.SM3" in out and "FEAT_SM3" in out


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"registers": {"ID_AA64BOGUS_EL1": "0x1"}}, "registers.ID_AA64BOGUS_EL1: unknown register"),
        ({"registers": {"ID_AA64ISAR0_EL1": "0x1g"}}, "registers.ID_AA64ISAR0_EL1: '0x1g' is not valid hex"),
        ({"registers": {"ID_ISAR0_EL1": "0x100000000"}}, "wider than the register's 32 bits"),
        ({"registers": {"ID_AA64ISAR0_EL1": 12}, "cores": "x"}, "cores: expected a list"),
        ({"registers": {}}, "no register values"),
    ],
)
def test_bad_profiles_exit_2_naming_file_and_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: dict[str, object], message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, _, err = run(capsys, "describe", str(bad))
    assert code == 2 and str(bad) in err and message in err


def test_unknown_feature_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "baseline", G3, "--feature", "FEAT_Crypto=off")
    assert code == 2 and "features.FEAT_Crypto" in err and "defined only through other features" in err
    code, _, err = run(capsys, "baseline", G3, "--base", "pentium")
    assert code == 2 and "unknown base model 'pentium'" in err


def test_models_and_features_list(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "models", "-o", "json")
    models = json.loads(out)
    assert {"neoverse-n1", "neoverse-v1", "neoverse-n2", "neoverse-v2", "ampereone"} <= set(models)
    assert "FEAT_SVE" not in models["ampereone"]["features"] and "FEAT_BTI" in models["ampereone"]["features"]
    _, out, _ = run(capsys, "features", "-o", "json")
    feats = json.loads(out)
    assert feats["FEAT_PMULL"] == "ID_AA64ISAR0_EL1.AES >= 2"
    assert feats["FEAT_Crypto"].startswith("dependency-only")


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`armcpu baseline ... | head -1`: the CLI stops quietly when its reader closes the pipe."""
    import subprocess
    import sys

    profiles = ["examples/profiles/graviton3-kvm-6.18.json", "examples/profiles/graviton4-kvm-6.18.json"]
    # the reader closes its end before the CLI (slower to start) writes a byte: the CLI's first write
    # meets a closed pipe whatever the output's size (`head -c 10` raced a CLI that now writes its
    # whole output into the pipe buffer before head exits)
    reader = f"{sys.executable} -c 'import os, time; os.close(0); time.sleep(3)'"
    script = f"{sys.executable} -m armcpu_cli.main baseline --assume-kvm {' '.join(profiles)} | {reader}; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout == "141\n" and done.stderr == ""


def test_baseline_json_says_the_guarantee_per_enforcement_before_anything_is_applied(capsys: pytest.CaptureFixture[str]) -> None:
    """Graviton3 + Graviton4: Scheduling cannot make it safe (no node's view is the model); HookSidecar
    can only with a QEMU that has SYSREG and impl-cpu, which the user declares."""
    code, out, _ = run(capsys, "baseline", "--assume-kvm", G3, G4, "-o", "json")
    stock = json.loads(out)["guarantee"]
    assert code == 0 and set(stock) == {"Scheduling", "HookSidecar"}
    assert stock["Scheduling"]["safe"] is False and stock["Scheduling"]["reason"] == "NoNodePresentsModel"
    assert stock["Scheduling"]["migrateTo"] == []
    assert stock["HookSidecar"] == {**stock["HookSidecar"], "safe": False, "reason": "VmmLacksSysreg", "startOn": []}
    _, out, _ = run(capsys, "baseline", "--assume-kvm", G3, G4, "-o", "json", "--vmm-sysreg", "--vmm-impl-cpu")
    capable = json.loads(out)
    names = sorted(capable["nodes"])
    assert capable["guarantee"]["HookSidecar"]["safe"] is True
    assert capable["guarantee"]["HookSidecar"]["startOn"] == capable["guarantee"]["HookSidecar"]["migrateTo"] == names
    assert capable["guarantee"]["Scheduling"] == stock["Scheduling"]  # the VMM does not change what passthrough carries
    assert capable["vmm"] == {"sysreg": True, "implCpu": True}


def test_baseline_flags_an_identity_that_promises_hidden_features(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "baseline", "--assume-kvm", G4, G3, "-o", "json")
    told = json.loads(out)["identity"]
    assert code == 0 and told["core"].startswith("Arm Neoverse-V2") and not told["truthful"]
    assert {"bti", "sb"} <= set(told["hiddenHwcaps"]) and "SIGILL" in told["message"]
    _, table, _ = run(capsys, "baseline", "--assume-kvm", G4, G3)
    assert "identity: the guest sees the MIDR of Arm Neoverse-V2" in table
    assert "migration under Scheduling: NOT safe (NoNodePresentsModel)" in table
