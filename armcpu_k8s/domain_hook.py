#!/usr/bin/env python3
"""KubeVirt ``onDefineDomain`` hook: start QEMU with the CpuModel's per-field ID register properties.

libvirt's aarch64 driver cannot express ID register fields, so the only route today is
``<qemu:commandline>`` with a second ``-cpu host,SYSREG_...`` (QEMU keeps the last ``-cpu``) and, for
target implementations, a second ``-machine impl-cpu...`` (QEMU merges ``-machine`` options).

This file is the whole hook: the operator puts its source into a ConfigMap that KubeVirt's sidecar-shim
runs as ``onDefineDomain --vmi <json> --domain <xml>``; the domain it prints is the one libvirt defines.
It is self-contained on purpose (the shim image has Python's standard library and nothing else).
What to add comes from the VMI's annotations, which the operator wrote on the VM template:

- ``armcpu.io/qemu-cpu``: ``host,<prop>=<value>,...`` for ``-cpu``;
- ``armcpu.io/qemu-machine`` (optional): ``impl-cpu.N.<reg>=<value>,...`` for ``-machine``.

A VMI without them passes through unchanged. A malformed value, or a domain whose CPU is not
``host-passthrough``, is an error (exit 1, reason on stderr): starting a guest with the wrong CPU
would silently break the migration guarantee, refusing to start is loud and safe. On a migration
target KubeVirt reuses the source's domain, so what is set here at boot travels with the VM.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
CPU_ANNOTATION = "armcpu.io/qemu-cpu"
MACHINE_ANNOTATION = "armcpu.io/qemu-machine"
_PROP = r"[A-Za-z][A-Za-z0-9_.-]{0,80}=[A-Za-z0-9]{1,20}"
_CPU_VALUE = re.compile(rf"host(,{_PROP}){{0,400}}")
_MACHINE_VALUE = re.compile(rf"{_PROP}(,{_PROP}){{0,400}}")

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("kubevirt", "http://kubevirt.io")


class HookError(Exception):
    """The domain cannot be given the model; the message says which value is wrong."""


def wanted_args(vmi: dict[str, object]) -> list[str]:
    """The QEMU arguments armcpu adds for this VMI, checked; empty when it is not armcpu's."""
    metadata = vmi.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict) or CPU_ANNOTATION not in annotations:
        return []
    cpu = annotations[CPU_ANNOTATION]
    if not isinstance(cpu, str) or not _CPU_VALUE.fullmatch(cpu):
        raise HookError(f"annotation {CPU_ANNOTATION}={cpu!r} is not 'host' followed by ',name=value' properties")
    args = ["-cpu", cpu]
    machine = annotations.get(MACHINE_ANNOTATION)
    if machine:
        if not isinstance(machine, str) or not _MACHINE_VALUE.fullmatch(machine):
            raise HookError(f"annotation {MACHINE_ANNOTATION}={machine!r} is not a list of name=value properties")
        args += ["-machine", machine]
    return args


def rewrite(domain_xml: str, vmi: dict[str, object]) -> str:
    """``domain_xml`` with armcpu's QEMU arguments appended (once: a rerun adds nothing)."""
    args = wanted_args(vmi)
    if not args:
        return domain_xml
    root = ET.fromstring(domain_xml)
    cpu = root.find("cpu")
    mode = cpu.get("mode") if cpu is not None else None
    if mode != "host-passthrough":
        raise HookError(f"domain CPU mode is {mode!r}; armcpu models apply to host-passthrough guests only")
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is None:
        commandline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    arg_tag = f"{{{QEMU_NS}}}arg"
    present = [a.get("value") for a in commandline.findall(arg_tag)]
    pairs = [args[i : i + 2] for i in range(0, len(args), 2)]
    for pair in pairs:
        if any(present[i : i + 2] == pair for i in range(len(present) - 1)):
            continue
        # qemu:arg elements come first in libvirt's schema (before qemu:env and friends)
        position = len(commandline.findall(arg_tag))
        for offset, value in enumerate(pair):
            element = ET.Element(arg_tag, {"value": value})
            commandline.insert(position + offset, element)
    return ET.tostring(root, encoding="unicode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onDefineDomain")
    parser.add_argument("--vmi", required=True, help="the VirtualMachineInstance, JSON")
    parser.add_argument("--domain", required=True, help="the libvirt domain, XML")
    args = parser.parse_args(argv)
    try:
        out = rewrite(args.domain, json.loads(args.vmi))
    except (HookError, ValueError, ET.ParseError) as exc:
        print(f"armcpu domain hook: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
