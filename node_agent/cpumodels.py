"""A read-only view of the cluster's CpuModels, kept by one LIST and a WATCH, for the verifier.

Why a watch and not a LIST per cycle: a new revision should be verified within seconds, not at the
next probe interval, and thousands of agents listing every few seconds would load the API server.
The watch thread wakes the agent only when the set of models its node must verify changes, so a
CpuModel whose status merely recounts VMs costs nothing but the event itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from armcpu_k8s.kube import ApiError, Kube
from armcpu_k8s.resources import CPUMODELS

log = logging.getLogger(__name__)
PATH = CPUMODELS.collection()


class CpuModels:
    """The CpuModels as last seen; ``changed`` is called (from the watch thread) after each event."""

    def __init__(self, kube: Kube, changed: Callable[[], None], stop: threading.Event, watch_seconds: int = 290) -> None:
        self.kube, self.changed, self.stop = kube, changed, stop
        self.watch_seconds = watch_seconds  # the server ends each watch after this; the loop lists again
        self.lock = threading.Lock()
        self.items: dict[str, Mapping[str, Any]] = {}
        self.synced = threading.Event()
        self.thread: threading.Thread | None = None

    def snapshot(self) -> list[Mapping[str, Any]]:
        with self.lock:
            return list(self.items.values())

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="cpumodel-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        delay = 1.0
        while not self.stop.is_set():
            try:
                listing = self.kube.get(PATH)
                with self.lock:
                    self.items = {i["metadata"]["name"]: i for i in listing.get("items") or []}
                self.synced.set()
                self.changed()
                version = listing["metadata"]["resourceVersion"]
                for event in self.kube.watch(PATH, version, timeout_seconds=self.watch_seconds):
                    if self.stop.is_set():
                        return
                    if self._apply(event):
                        break  # 410 Gone or another error event: list again
                    delay = 1.0
            except (ApiError, OSError, ValueError, KeyError) as exc:
                log.warning("CpuModel watch failed; retrying", extra={"error": str(exc), "retry_seconds": delay})
                self.stop.wait(delay)
                delay = min(delay * 2, 60.0)

    def _apply(self, event: Mapping[str, Any]) -> bool:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            return True
        if kind == "BOOKMARK":
            return False
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return False
        with self.lock:
            if kind == "DELETED":
                self.items.pop(name, None)
            else:
                self.items[name] = obj
        self.changed()
        return False
