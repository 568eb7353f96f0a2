"""The operator's caches: compact VM store, shared parsed profiles, echo recognition, the World they freeze."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from armcpu.profile import Profile, to_dict
from armcpu_operator.caches import Caches, ProfileParser
from armcpu_operator.planning import vms
from armcpu_testing.fixtures import host_618_profile

G3, G4 = "kvm-guest/graviton3-neoverse-v1-host6.18.json", "kvm-guest/graviton4-neoverse-v2-host6.18.json"


def profile_item(name: str, cpu: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": to_dict(replace(host_618_profile(cpu), name=name))}


def vm_body(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"running": False, "template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}, "devices": {}}}}}}


def test_equal_profiles_share_one_parse_and_keep_their_own_names() -> None:
    parse = ProfileParser()
    a, b, c = parse(profile_item("a", G3)), parse(profile_item("b", G3)), parse(profile_item("c", G4))
    assert isinstance(a, Profile) and isinstance(b, Profile) and isinstance(c, Profile)
    assert (a.name, b.name, c.name) == ("a", "b", "c")
    assert a.registers is b.registers, "one parse shared by equal profiles"
    assert a.registers is not c.registers and a.registers != c.registers
    assert parse(profile_item("a", G3)) == a
    broken = parse({"metadata": {"name": "x"}, "spec": {"registers": "nope"}})
    assert isinstance(broken, str) and "x" in broken, "a broken profile still says which node"


def test_a_vm_is_kept_compact_and_read_back_as_it_was() -> None:
    body = vm_body("v", {"app": "web"})
    encoded, about = vms.stored(body)
    assert json.loads(encoded) == vms.subset(body)
    assert about == vms.Summary({"app": "web"}, None, False)
    table = vms.VmTable({("ns", "v"): encoded})
    assert table[("ns", "v")] == vms.subset(body) and table[("ns", "v")] is not table[("ns", "v")], "decoded at each read, never kept"
    assert list(table) == [("ns", "v")] and ("ns", "v") in table and len(table) == 1


def test_the_echo_of_our_own_patch_wakes_nobody_and_anything_else_does() -> None:
    async def run() -> None:
        caches = Caches()
        claims = {"m": [{"matchLabels": {"app": "web"}}]}
        caches.models_changed("m", 1, False, claims, {"m": {"matchLabels": {"pool": "p"}}})
        caches.triggers["m"].clear()
        caches.vms_changed([(("ns", "v"), vms.stored(vm_body("v", {"app": "web"})))], replace=True)
        assert caches.triggers["m"].is_set(), "a VM the model selects appeared"
        caches.triggers["m"].clear()
        desired = vms.Desired("m", 1, "f", ("sve",))
        target = vms.target(vms.subset(vm_body("v", {"app": "web"})), desired)
        caches.written_vms[("ns", "v")] = vms.stored(target)
        world = caches.world("now", hook_script="", kernel_verification="Advisory")
        assert world.vms[("ns", "v")] == target, "a write not echoed yet is what the next plan sees"
        assert world.vm_index is not None and world.vm_index[("ns", "v")].model == "m"
        echoed = vms.target(vm_body("v", {"app": "web"}), desired)
        caches.vms_changed([(("ns", "v"), vms.stored(echoed))], replace=False)
        assert not caches.triggers["m"].is_set(), "exactly our own patch: nothing to reconcile"
        assert caches.vms_view()[0][("ns", "v")] == caches.vm_store[("ns", "v")] and not caches.written_vms
        relabelled = vms.target(vm_body("v", {"app": "web", "tier": "x"}), desired)
        caches.vms_changed([(("ns", "v"), vms.stored(relabelled))], replace=False)
        assert caches.triggers["m"].is_set(), "someone else changed it"
        caches.triggers["m"].clear()
        caches.vms_changed([], replace=True)
        assert ("ns", "v") not in caches.vm_store and ("ns", "v") not in caches.vm_index
        assert caches.triggers["m"].is_set(), "a relist without it: deleted while we were not watching"

    asyncio.run(run())
