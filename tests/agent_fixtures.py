"""Host trees and KVM conversations for the agent's probe tests, built from ../shared/cpus data.

The request numbers and struct layouts here are written out from the uapi headers on their own
(not imported from the probe), so a wrong constant in the probe makes the replay refuse it.

``python -m tests.agent_fixtures`` rewrites the committed fixtures under tests/fixtures/.
"""

from __future__ import annotations

import json

from armcpu import kvm
from armcpu_testing.fixtures import (  # noqa: F401  (re-exported for the tests)
    CAPS,
    CHECK_EXTENSION,
    CREATE_VCPU,
    CREATE_VM,
    GET_API_VERSION,
    PREFERRED_TARGET,
    TARGET_GENERIC_V8,
    VCPU_FINALIZE,
    VCPU_INIT,
    conversation,
    registers_of,
    write_host_tree,
)
from tests.helpers import CPUS, REPO

FIXTURES = REPO / "tests" / "fixtures"

def committed() -> None:
    g4 = json.loads((CPUS / "kvm-guest/graviton4-neoverse-v2-host6.18.json").read_text())
    g4_host = json.loads((CPUS / "graviton4.json").read_text())
    regs = registers_of(g4)
    conv = conversation(
        regs, kvm.assumed_writable_masks(aarch32_el0=False),
        source="Constructed from ../shared/cpus/kvm-guest/graviton4-neoverse-v2-host6.18.json (Firecracker's KVM_GET_ONE_REG dump; "
               "its vCPU had SVE and pointer auth off, so those capabilities answer 0) with the 6.18 writable-mask table of armcpu/kvm.py",
    )
    path = FIXTURES / "kvm/graviton4-host6.18.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conv, indent=1) + "\n")
    write_host_tree(FIXTURES / "hosts/graviton4", {**g4, "cpuinfo_features": g4_host["cpuinfo_features"]},
                    ncpus=4, kernel="6.18.30-61.116.amzn2023.aarch64")
    # RK3399-style big.LITTLE: four Cortex-A53 r0p4 and two Cortex-A72 r0p2, no KVM, no HWCAP_CPUID.
    write_host_tree(FIXTURES / "hosts/biglittle", {"midr": "0x410fd034", "registers": {}, "cpuinfo_features": ["fp", "asimd", "aes", "crc32"]},
                    ncpus=6, kernel="6.1.0", cores=[(0x410FD034, 0, [0, 1, 2, 3]), (0x410FD082, 0, [4, 5])])


if __name__ == "__main__":
    committed()
