"""The domain hook's output through a real libvirt (9.0, Debian): libvirt accepts the rewritten domain,
keeps armcpu's QEMU arguments exactly, after the user's, and changes nothing else it would not have
changed anyway."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from armcpu_k8s import domain_hook
from armcpu_testing import libvirt
from tests.unit.test_domain_hook import MACHINE, QEMU, RENDERING, SAMPLES, args_of, canonical, vmi

pytestmark = pytest.mark.libvirt


@pytest.fixture(scope="module")
def daemon() -> Iterator[None]:
    with libvirt.daemon() as up:
        if not up:
            if os.geteuid() == 0 and os.environ.get("CI"):
                pytest.fail("CI runs as root with libvirt installed by scripts/setup.sh: the daemon must answer")
            pytest.skip("no libvirt daemon (needs root and Debian's libvirt-daemon-system, which scripts/setup.sh installs as root)")
        yield


def _without_generated(xml: str) -> object:
    """Without what libvirt generates afresh at each define: the UUID and interfaces' MAC addresses."""
    root = ET.fromstring(xml)
    for uuid in root.findall("uuid"):
        root.remove(uuid)
    for interface in root.iter("interface"):
        for mac in interface.findall("mac"):
            interface.remove(mac)
    return canonical(ET.tostring(root, encoding="unicode"))


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_libvirt_keeps_the_rewritten_domain_and_only_adds_what_it_adds_anyway(daemon: None, sample: Path) -> None:
    before = libvirt.define_and_dump(sample.read_text())
    after = libvirt.define_and_dump(domain_hook.rewrite(sample.read_text(), vmi(machine=MACHINE)))
    added = ["-cpu", RENDERING.cpu_arg, "-machine", MACHINE]
    assert args_of(after) == args_of(before) + added, "libvirt keeps armcpu's arguments, last, in order"
    root = ET.fromstring(after)
    line = root.find(f"{QEMU}commandline")
    assert line is not None
    for element in line.findall(f"{QEMU}arg")[len(args_of(before)):]:
        line.remove(element)
    if len(line) == 0:
        root.remove(line)
    assert _without_generated(ET.tostring(root, encoding="unicode")) == _without_generated(before)
