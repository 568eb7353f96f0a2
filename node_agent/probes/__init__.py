"""Probes: each reads one source of CPU facts on a node, rooted at a configurable host root.

The probes only read and decode; choosing which result to publish is :mod:`node_agent.collect`.
"""

from __future__ import annotations


class ProbeUnavailable(Exception):
    """This probe cannot run on this node (no /dev/kvm, no HWCAP_CPUID): try the next one."""


class ProbeError(Exception):
    """The probe ran and got input it cannot trust; the message names the file or ioctl."""
