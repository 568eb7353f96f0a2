"""What the operator's caches hold per VM and per node, measured with tracemalloc.

Compares the representation the operator keeps now (a VM as compact JSON with its summary; equal
NodeCpuProfiles sharing one parse) with the one it kept before (a VM's subset as dicts plus its
labels; one parsed profile per node), on the benchmark's VM and the recorded Graviton4 profile.

    .venv/bin/python -m benchmarks.memory
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

from armcpu.profile import to_dict
from armcpu_operator.caches import ProfileParser
from armcpu_operator.planning import plan, vms
from armcpu_testing.fixtures import host_618_profile

DESIRED = vms.Desired("bench-p0", 1, "abcdef0123456789", ("sve",))


def vm_body(i: int, dressed: bool) -> dict[str, Any]:
    """The convergence benchmark's VM, as the watch delivers it (freshly parsed JSON)."""
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": f"vm-{i:05d}", "namespace": "bench", "uid": f"1234567-{i:05d}-abcd-ef01-23456789abcd", "labels": {"pool": "p0"}},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}, "devices": {},
                                                                               "memory": {"guest": "1Gi"}}}}}}
    loaded: dict[str, Any] = json.loads(json.dumps(vms.target(body, DESIRED) if dressed else body))
    return loaded


def per_object_kib(make: Callable[[int], object], count: int) -> float:
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    kept = [make(i) for i in range(count)]
    held = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    assert len(kept) == count
    return held / count / 1024


def main() -> int:
    out: dict[str, float] = {}
    for dressed in (False, True):
        state = "dressed" if dressed else "undressed"

        def before(i: int, d: bool = dressed) -> object:  # the VM's subset as dicts, and its (labels, model) entry
            body = vm_body(i, d)
            return vms.subset(body), (dict(body["metadata"]["labels"]), vms.uses(body))

        def after(i: int, d: bool = dressed) -> object:
            return vms.stored(vm_body(i, d))

        out[f"vm_{state}_before_kib"] = per_object_kib(before, 5000)
        out[f"vm_{state}_after_kib"] = per_object_kib(after, 5000)
    raw = to_dict(host_618_profile("kvm-guest/graviton4-neoverse-v2-host6.18.json"))
    out["profile_before_kib"] = per_object_kib(lambda i: plan.parse_profile(f"n-{i:05d}", json.loads(json.dumps(raw))), 2000)
    parse = ProfileParser()
    out["profile_after_kib"] = per_object_kib(lambda i: parse({"metadata": {"name": f"n-{i:05d}"}, "spec": json.loads(json.dumps(raw))}), 2000)
    print(json.dumps({k: round(v, 2) for k, v in out.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
