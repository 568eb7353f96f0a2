"""KubeVirt VirtualMachines, listed and watched directly rather than through kopf.

VMs are the one collection that reaches tens of thousands of objects, and every patch armcpu sends
comes back as a watch event; kopf's per-event machinery (handler selection, diffs, progress
bookkeeping) cost about 20 ms per event in the benchmark, most of the operator's time. Here an event
costs a JSON parse and a small dict comparison. A thread lists (paginated) and then watches from the
list's resourceVersion, relisting when the version expires (410) and backing off on errors; it hands
each change to the asyncio loop, where all state lives, so nothing is shared across threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from armcpu_k8s.kube import ApiError, Kube
from armcpu_operator import vms

log = logging.getLogger("armcpu.operator")
PATH = "/apis/kubevirt.io/v1/virtualmachines"
VmKey = tuple[str, str]
Change = tuple[VmKey, dict[str, Any] | None]


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""


def _key(obj: dict[str, Any]) -> VmKey:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class VmWatch:
    """Delivers every VM (as :func:`armcpu_operator.vms.subset`) to ``deliver`` on ``loop``: the whole
    collection after each list (``replace=True``), then each change."""

    def __init__(self, kube: Kube, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[list[Change], bool], None], page_size: int = 500) -> None:
        self.kube = kube
        self.loop = loop
        self.deliver = deliver
        self.page_size = page_size
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vm-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _post(self, changes: list[Change], replace: bool) -> None:
        if changes or replace:
            self.loop.call_soon_threadsafe(self.deliver, changes, replace)

    def _list(self) -> str:
        changes: list[Change] = []
        token = ""
        version = ""
        while True:
            query = {"limit": str(self.page_size), **({"continue": token} if token else {})}
            page = self.kube.request("GET", PATH, query=query)
            changes += [(_key(item), vms.subset(item)) for item in page.get("items") or []]
            meta = page.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            token = meta.get("continue") or ""
            if not token:
                break
        self._post(changes, replace=True)
        return version

    def _watch(self, version: str) -> str:
        for event in self.kube.watch(PATH, version):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired()
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message")), "WATCH", PATH)
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind != "BOOKMARK":
                self._post([(_key(obj), None if kind == "DELETED" else vms.subset(obj))], replace=False)
            if self.stop.is_set():
                break
        return version

    def _run(self) -> None:
        delay = 1.0
        while not self.stop.is_set():
            try:
                version = self._list()
                delay = 1.0
                while not self.stop.is_set():
                    version = self._watch(version)
            except _Expired:
                log.info("VM watch expired; listing again")
            except (ApiError, OSError, ValueError) as exc:
                log.warning("VM list/watch failed; retrying", extra={"error": str(exc), "retry_seconds": delay})
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
