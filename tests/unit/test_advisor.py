"""``armcpu advise`` on real recordings: its classes, matrix and proposals are what the operator's own
pipeline and guarantee say, its front is a Pareto front found by brute force, and each manifest selects
exactly the nodes it was made for.

The profiles are the emulated tier's recordings (six CPUs, each under Linux 6.12 and 7.3, with the
writable masks and guest views their kernels reported), copied to several nodes each.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armcpu import advisor, pool
from armcpu.guarantee import guarantee
from armcpu.profile import Profile, from_dict
from armcpu_cli import main as cli
from armcpu_k8s import manifests, selectors
from node_agent.plan import desired_labels
from tests.helpers import REPO

RECORDINGS = sorted((REPO / "tests" / "fixtures" / "kvm" / "emulated").glob("*/profile-kvm.json"))
REAL = [from_dict(json.loads(p.read_text()), p.parent.name) for p in RECORDINGS]


def _nodes(counts: Sequence[tuple[int, int]]) -> list[Profile]:
    """``(recording, copies)`` pairs as nodes named after their recording."""
    out = []
    for index, copies in dict(counts).items():
        out += [dataclasses.replace(REAL[index], name=f"{REAL[index].name}-{n}") for n in range(copies)]
    return out


def _pool_answer(profiles: Sequence[Profile], stack: advisor.Stack) -> tuple[int, int] | None:
    """What the operator's pipeline and guarantee say of this pool, computed on every node: (nodes that
    may take its VMs, FEATs kept) when every node may, else None."""
    planned = pool.plan_pool(sorted(profiles, key=lambda p: p.name))
    if not planned.feasible:
        return None
    usable = [n for n, c in planned.checks.items() if c.ok]
    g = guarantee(profiles, planned.model, mode=stack.mode, vmm=stack.vmm, usable=usable,
                  rendered_cpu=planned.qemu.cpu_properties, rendered_machine=planned.qemu.machine_properties)
    if not g.safe or set(g.migrate_to) != {p.name for p in profiles}:
        return None
    return len(profiles), len(planned.model.features)


def test_the_real_recordings_give_classes_per_cpu_and_kernel_and_a_matrix_on_both_stacks() -> None:
    advice = advisor.advise(_nodes([(i, 2) for i in range(len(REAL))]))
    assert len(advice.classes) == len(REAL) and all(len(c.members) == 2 for c in advice.classes)
    assert {c.kernel_series for c in advice.classes} == {"6.12", "7.3"}
    for stack, cells in advice.matrix.items():
        assert len(cells) == len(REAL) ** 2, stack
    # Same CPU, other kernel series: never a move (the register lists differ), on either stack
    a72 = [c.id for c in advice.classes if c.cpu == "arm-cortex-a72"]
    assert len(a72) == 2 and a72[0] != a72[1]
    for cells in advice.matrix.values():
        assert not any(cell.ok for cell in cells if {cell.source, cell.target} == set(a72))
    # A Neoverse N2 cannot run even its own view on these kernels (its CTR_EL0 guest view): said, not proposed
    n2 = {c.id for c in advice.classes if c.cpu == "arm-neoverse-n2"}
    assert all(not set(p.class_ids) & n2 for p in advice.proposals)
    assert sum("not even alone" in note and "CTR_EL0.TminLine" in note for note in advice.notes) == 2


def test_every_cell_is_the_guarantee_of_the_pair_computed_on_all_their_nodes() -> None:
    nodes = _nodes([(i, 2) for i in (2, 3, 6, 7, 10, 11)])  # A76, N1, V1 under both kernels
    advice = advisor.advise(nodes)
    by_class = {c.id: [p for p in nodes if p.name in c.members] for c in advice.classes}
    for stack in advisor.STACKS:
        for cell in advice.matrix[stack.name]:
            members = by_class[cell.source] + ([] if cell.source == cell.target else by_class[cell.target])
            planned = pool.plan_pool(sorted(members, key=lambda p: p.name))
            if not planned.feasible:
                assert not cell.ok and cell.reason == "Infeasible"
                continue
            usable = [n for n, c in planned.checks.items() if c.ok]
            g = guarantee(members, planned.model, mode=stack.mode, vmm=stack.vmm, usable=usable,
                          rendered_cpu=planned.qemu.cpu_properties, rendered_machine=planned.qemu.machine_properties)
            want = (g.safe and {p.name for p in by_class[cell.source]} <= set(g.start_on)
                    and {p.name for p in by_class[cell.target]} <= set(g.migrate_to))
            assert cell.ok == want, (stack.name, cell)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(REAL) - 1), st.integers(1, 3)), min_size=1, max_size=5,
                unique_by=lambda t: t[0]))
def test_the_front_is_the_pareto_front_a_brute_force_finds(counts: list[tuple[int, int]]) -> None:
    nodes = _nodes(counts)
    advice = advisor.advise(nodes)
    by_series: dict[str, list[list[Profile]]] = {}
    for c in advice.classes:
        by_series.setdefault(c.kernel_series, []).append([p for p in nodes if p.name in c.members])
    for stack in advisor.STACKS:
        for series, groups in by_series.items():
            answers = {}
            for r in range(1, len(groups) + 1):
                for combo in itertools.combinations(range(len(groups)), r):
                    got = _pool_answer([p for i in combo for p in groups[i]], stack)
                    if got is not None:
                        answers[combo] = got
            best = {a for a in answers.values() if not any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in answers.values())}
            on_front = {(len(p.nodes), len(p.model.features)) for p in advice.proposals
                        if p.island == series and stack.name in p.fronts}
            assert on_front == best, (stack.name, series)


def test_each_proposal_is_what_the_operators_pipeline_computes_for_its_nodes() -> None:
    nodes = _nodes([(i, 3) for i in range(len(REAL))])
    advice = advisor.advise(nodes)
    assert advice.proposals
    for p in advice.proposals:
        members = [n for n in nodes if n.name in p.nodes]
        planned = pool.plan_pool(sorted(members, key=lambda n: n.name))
        assert planned.feasible and planned.model.fingerprint == p.model.fingerprint
        assert f"{len(p.nodes)} node(s), {len(p.model.features)} FEATs" in p.explanation
        for stack in advisor.STACKS:
            assert (_pool_answer(members, stack) is not None) == (stack.name in p.fronts)
        for class_id, lost in p.lost.items():
            own = next(c for c in advice.classes if c.id == class_id).features
            assert set(lost) == set(own) - set(p.model.features)


def test_each_manifest_selects_exactly_its_nodes_by_the_agents_labels() -> None:
    nodes = _nodes([(i, 2) for i in range(len(REAL))])
    advice = advisor.advise(nodes)
    labelled = {n.name: desired_labels(n) for n in nodes}
    for p in advice.proposals:
        manifest = manifests.cpumodel(p, advice.classes)
        assert selectors.check(manifest["spec"]["nodeSelector"]) == []
        picked = {name for name, node_labels in labelled.items() if selectors.matches(manifest["spec"]["nodeSelector"], node_labels)}
        assert picked == set(p.nodes), manifest["metadata"]["name"]
        assert manifest["spec"]["enforcement"] == ("Scheduling" if "stock" in p.fronts else "HookSidecar")


def test_the_table_fits_80_columns_and_json_carries_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in RECORDINGS]
    assert cli.main(["advise", *files]) == 0
    table = capsys.readouterr().out
    assert max(len(line) for line in table.splitlines()) <= 80
    assert cli.main(["advise", *files, "-o", "json", "--manifests", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"classes", "matrix", "proposals"}
    written = {f.stem: yaml.safe_load(f.read_text()) for f in tmp_path.glob("*.yaml")}
    assert written == {p["name"]: yaml.safe_load(p["manifest"]) for p in doc["proposals"]}
    assert all(p["name"] in table for p in doc["proposals"])


def test_the_same_node_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["advise", str(RECORDINGS[0]), str(RECORDINGS[0])]) == 2
    assert "two profiles name the same node" in capsys.readouterr().err


def test_the_example_graviton_profiles_give_graviton4_alone_on_stock_and_both_only_with_a_sysreg_qemu(
        capsys: pytest.CaptureFixture[str]) -> None:
    """What examples/cpumodels/graviton3-graviton4.yaml says in words, the advisor finds on its own."""
    examples = sorted(str(p) for p in (REPO / "examples" / "profiles").glob("*.json"))
    assert cli.main(["advise", "--assume-kvm", *examples, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cpus = {c["id"]: c["cpu"] for c in doc["classes"]}
    got = [(sorted(cpus[i] for i in p["classes"]), p["fronts"], yaml.safe_load(p["manifest"])["spec"]["enforcement"],
            p["guarantee"]["stock"]["reason"]) for p in doc["proposals"]]
    assert got == [(["arm-neoverse-v2"], ["stock", "sysreg"], "Scheduling", "NodesPresentModel"),
                   (["arm-neoverse-v1", "arm-neoverse-v2"], ["sysreg"], "HookSidecar", "NoNodePresentsModel")]
    both = doc["proposals"][1]
    lost = {cpus[i]: n for i, n in both["lost"].items()}
    assert f"costs {len(lost['arm-neoverse-v2'])} FEAT(s)" in both["explanation"] and "stock-unsafe" in both["explanation"]


def test_beyond_the_exhaustive_limit_the_greedy_chains_still_propose_only_proposable_non_dominated_pools(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = _nodes([(i, 1 + i % 3) for i in range(len(REAL))])
    exhaustive = advisor.advise(nodes)
    monkeypatch.setattr(advisor, "MAX_EXHAUSTIVE_UNITS", 2)  # every island of these 12 kinds has 6 units
    greedy = advisor.advise(nodes)
    for p in greedy.proposals:
        members = [n for n in nodes if n.name in p.nodes]
        for stack in advisor.STACKS:
            assert (_pool_answer(members, stack) is not None) == (stack.name in p.fronts)
        same = [q for q in greedy.proposals if q.island == p.island and set(q.fronts) & set(p.fronts) and q is not p]
        assert not any(len(q.nodes) >= len(p.nodes) and len(q.model.features) >= len(p.model.features) for q in same)
    best_alone = {(p.island, len(p.model.features)) for p in exhaustive.proposals if len(p.class_ids) == 1}
    assert best_alone <= {(p.island, len(p.model.features)) for p in greedy.proposals if len(p.class_ids) == 1}
