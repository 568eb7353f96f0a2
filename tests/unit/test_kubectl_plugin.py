"""``kubectl armcpu`` without a cluster: its exit codes when the kubeconfig or the cluster fails, flags
where kubectl users type them, and NodeCpuProfiles it cannot use reported instead of crashing it.
(With a cluster: tests/integration/test_advise.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from armcpu_cli import kubectl
from tests.helpers import REPO

RECORDING = REPO / "tests" / "fixtures" / "kvm" / "emulated" / "neoverse-n1-linux-7.3.4" / "profile-kvm.json"


def test_flags_typed_after_the_command_are_taken_as_kubectl_users_type_them() -> None:
    hoisted = kubectl._hoist_globals(["why", "m", "n1", "-o", "json", "--context=prod", "--kubeconfig", "k"])
    args = kubectl.build_parser().parse_args(hoisted)
    assert (args.command, args.cpumodel, args.node, args.output, args.context, args.kubeconfig) == ("why", "m", "n1", "json", "prod", "k")
    assert kubectl.build_parser().parse_args(kubectl._hoist_globals(["advise", "-l", "a=b"])).selector == "a=b"


def test_a_missing_kubeconfig_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl.main(["--kubeconfig", str(tmp_path / "none"), "advise"]) == 2
    assert "cannot load the kubeconfig" in capsys.readouterr().err


def test_a_cluster_that_does_not_answer_is_exit_3_with_what_was_being_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    assert kubectl.main(["--kubeconfig", str(config), "why", "m"]) == 3
    assert "cannot read cpumodel m" in capsys.readouterr().err


def test_an_unusable_profile_is_reported_and_the_others_are_used() -> None:
    good = {"metadata": {"name": "n1"}, "spec": yaml.safe_load(RECORDING.read_text())}
    bad = {"metadata": {"name": "n2"}, "spec": {"registers": {"ID_AA64ISAR0_EL1": "zz"}}}
    usable, skipped = kubectl.parse_profiles([good, bad])
    assert [p.name for p in usable] == ["n1"] and len(skipped) == 1 and "n2" in skipped[0]


def _status_for(profile_json: dict, **extra: object) -> dict:
    return {"revision": 1, "model": {"registers": profile_json["registers"], "implementations": []}, **extra}


def test_why_node_says_pending_where_the_kernel_has_not_spoken_and_quotes_a_kernels_refusal() -> None:
    raw = yaml.safe_load(RECORDING.read_text())
    node = kubectl.parse_profiles([{"metadata": {"name": "n1"}, "spec": raw}])[0][0]
    pending = kubectl.node_answer(_status_for(raw, pendingNodes=["n1"]), node)
    assert pending.verdict.startswith("pending") and pending.check.ok
    refused_by_kernel = ["this node's kernel refused the model (armcpu's rules predicted it would run): ID_AA64PFR0_EL1.RAS"]
    kernel_no = kubectl.node_answer(_status_for(raw, incompatibleNodes=[{"name": "n1", "reasons": refused_by_kernel}]), node)
    assert kernel_no.verdict == "incompatible" and kernel_no.check.ok and kernel_no.status_reasons == tuple(refused_by_kernel)
    assert kubectl.node_answer(_status_for(raw), node).verdict == "compatible"
