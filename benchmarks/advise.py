"""``armcpu advise`` at fleet size: N nodes made from the emulated tier's twelve real recordings (six
CPUs, each under Linux 6.12 and 7.3), in uneven shares as a fleet has them. Measured in this process:
the advisor's wall time and CPU time, and the peak RSS of the whole run (profiles included).

    .venv/bin/python -m benchmarks.advise --nodes 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from armcpu import advisor
from armcpu.profile import Profile, from_dict

RECORDINGS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kvm" / "emulated"


def fleet(nodes: int) -> list[Profile]:
    """``nodes`` profiles, each parsed from its own JSON as ``kubectl armcpu`` parses NodeCpuProfiles:
    recording i gets a share proportional to i + 1 (the last kinds are the most common)."""
    kinds = [p.read_text() for p in sorted(RECORDINGS.glob("*/profile-kvm.json"))]
    weights = [i + 1 for i in range(len(kinds))]
    out = []
    for n in range(nodes):
        slot = n % sum(weights)
        index = next(i for i in range(len(kinds)) if slot < sum(weights[: i + 1]))
        out.append(from_dict({**json.loads(kinds[index]), "name": f"node-{n:05d}"}, f"node-{n:05d}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.advise")
    parser.add_argument("--nodes", type=int, default=5000)
    args = parser.parse_args()
    parse = time.perf_counter()
    profiles = fleet(args.nodes)
    parsed = time.perf_counter() - parse
    wall, cpu = time.perf_counter(), time.process_time()
    advice = advisor.advise(profiles)
    result = {
        "nodes": len(profiles),
        "classes": len(advice.classes),
        "proposals": len(advice.proposals),
        "largest_proposal_nodes": max((len(p.nodes) for p in advice.proposals), default=0),
        "parse_wall_s": round(parsed, 2),
        "advise_wall_s": round(time.perf_counter() - wall, 2),
        "advise_cpu_s": round(time.process_time() - cpu, 2),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
