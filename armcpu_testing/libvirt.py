"""A real libvirt (Debian's libvirt-daemon-system) for the domain hook's tests: define a domain, read
back what libvirt made of it, and undefine it.

This machine has no aarch64 KVM, so domains are defined as ``type='qemu'`` (TCG); libvirt parses,
validates and normalises the rest exactly as for KVM, ``<qemu:commandline>`` included. The system
daemon is started if it is not running (root only) and stopped again by :func:`daemon`'s caller.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

URI = "qemu:///system"
SOCKET = Path("/var/run/libvirt/libvirt-sock")


def virsh(*args: str, input_xml: str | None = None) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as fh:
        argv = ["virsh", "-q", "-c", URI, *args]
        if input_xml is not None:
            fh.write(input_xml)
            fh.flush()
            argv.append(fh.name)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def daemon() -> Iterator[bool]:
    """Yields whether a libvirt daemon answers; starts one (and stops it afterwards) if root can."""
    if shutil.which("virsh") is None or shutil.which("libvirtd") is None:
        yield False
        return
    started = None
    if not SOCKET.exists() and os.geteuid() == 0:
        for directory in ("/var/log/libvirt", "/var/run/libvirt"):
            Path(directory).mkdir(parents=True, exist_ok=True)
        started = subprocess.Popen(["libvirtd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while not SOCKET.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    try:
        try:
            virsh("list", "--all")
            yield True
        except RuntimeError:
            yield False
    finally:
        if started is not None:
            started.terminate()
            started.wait(timeout=30)


def define_and_dump(domain_xml: str) -> str:
    """What libvirt keeps of ``domain_xml`` (``virsh define`` then ``dumpxml --inactive``), undefined after."""
    name = ET.fromstring(domain_xml).findtext("name") or "armcpu-test"
    # the root's type only, textually: re-serialising would rename the document's namespace prefixes
    tcg = re.sub(r"""^(\s*<domain\b[^>]*?\btype=)(["'])kvm\2""", r"\1\2qemu\2", domain_xml, count=1)
    virsh("define", input_xml=tcg)
    try:
        return virsh("dumpxml", "--inactive", name)
    finally:
        virsh("undefine", *(["--nvram"] if "nvram" in domain_xml else []), name)


def version() -> str:
    """libvirt's version, e.g. ``9.0.0``."""
    return subprocess.run(["virsh", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m armcpu_testing.libvirt",
                                     description="Write libvirt's own rendering of each domain XML file next to it.")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    with daemon() as up:
        if not up:
            print("no libvirt daemon (install libvirt-daemon-system and run as root)", file=sys.stderr)
            return 1
        release = version()
        for path in args.files:
            out = path.with_name(f"libvirt-{release}-{path.name}")
            out.write_text(define_and_dump(path.read_text()))
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
