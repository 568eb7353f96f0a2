"""Nodes, NodeCpuProfiles and KubeVirt VMs and VMIs, listed and watched directly rather than through kopf.

These are the collections that reach thousands (nodes, profiles) and tens of thousands (VMs, VMIs)
of objects; every label or VM patch armcpu sends comes back as a watch event, and KubeVirt updates
a running VMI's status often. kopf's per-event
machinery (handler selection, diffs, progress bookkeeping) cost about 20 ms per event in the
benchmark, most of the operator's time; here an event costs a JSON parse, the caller's small
conversion and a dict comparison. kopf still handles armcpu's own CpuModels.

A thread per collection lists (paginated) and then watches from the list's resourceVersion,
relisting when the version expires (410) and backing off on errors; it hands each change to the
asyncio loop, where all state lives, so nothing is shared across threads. Nodes and VMIs are read
as metadata only (``PartialObjectMetadata``): armcpu needs a Node's labels and a VMI's annotations,
and their status (a Node's images and conditions, a VMI's interfaces, guest info, migration state)
is most of their size.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from armcpu_k8s.kube import ApiError, Kube

log = logging.getLogger("armcpu.operator")
V = TypeVar("V")
Key = tuple[str, str]  # (namespace or "", name)
METADATA_ONLY = "application/json;as=PartialObjectMetadata{};g=meta.k8s.io;v=v1,application/json"


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class ListWatch(Generic[V]):
    """Delivers every object of ``path`` (as ``convert`` makes it) to ``deliver`` on ``loop``: the
    whole collection after each list (``replace=True``), then each change (``None``: deleted)."""

    def __init__(self, kube: Kube, loop: asyncio.AbstractEventLoop, path: str,
                 convert: Callable[[dict[str, Any]], V], deliver: Callable[[list[tuple[Key, V | None]], bool], None],
                 *, what: str, metadata_only: bool = False, page_size: int = 500) -> None:
        self.kube = kube
        self.loop = loop
        self.path = path
        self.convert = convert
        self.deliver = deliver
        self.what = what
        self.page_size = page_size
        self.list_accept = METADATA_ONLY.format("List") if metadata_only else None
        self.watch_accept = METADATA_ONLY.format("") if metadata_only else None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"{what}-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _post(self, changes: list[tuple[Key, V | None]], replace: bool) -> None:
        if changes or replace:
            self.loop.call_soon_threadsafe(self.deliver, changes, replace)

    def _list(self) -> str:
        changes: list[tuple[Key, V | None]] = []
        token = ""
        version = ""
        while True:
            query = {"limit": str(self.page_size), **({"continue": token} if token else {})}
            page = self.kube.request("GET", self.path, query=query, accept=self.list_accept)
            changes += [(key_of(item), self.convert(item)) for item in page.get("items") or []]
            meta = page.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            token = meta.get("continue") or ""
            if not token:
                break
        self._post(changes, replace=True)
        return version

    def _watch(self, version: str) -> str:
        for event in self.kube.watch(self.path, version, accept=self.watch_accept):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired()
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message")), "WATCH", self.path)
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind != "BOOKMARK":
                self._post([(key_of(obj), None if kind == "DELETED" else self.convert(obj))], replace=False)
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
                log.info("watch expired; listing again", extra={"collection": self.what})
            except (ApiError, OSError, ValueError) as exc:
                log.warning("list/watch failed; retrying", extra={"collection": self.what, "error": str(exc), "retry_seconds": delay})
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:  # a bug must not silently end the watch: the operator would act on a frozen view
                log.exception("list/watch crashed; retrying", extra={"collection": self.what, "error": str(exc), "retry_seconds": delay})
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
