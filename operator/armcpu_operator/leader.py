"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas (e.g. during a rollout)
never both write. kopf's peering is not a Lease and freezes equal-priority peers, so armcpu runs
kopf standalone and holds this Lease around it.

The holder renews every ``renew`` seconds; a candidate takes the Lease only when its renewTime is
older than leaseDurationSeconds. Updates carry the resourceVersion read, so two candidates racing
for an expired Lease cannot both win (the loser gets 409). A holder that cannot renew within the
duration stops the operator before anyone else can take over.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from armcpu_k8s.kube import ApiError, Kube

log = logging.getLogger("armcpu.leader")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _fmt(ts: datetime.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)  # MicroTime, e.g. 2026-11-25T06:30:00.123456Z


@dataclass
class LeaderElection:
    kube: Kube
    namespace: str
    name: str
    identity: str
    duration: int = 15
    renew: float = 5.0
    on_lost: Callable[[], None] = lambda: None
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def _spec(self, acquire: datetime.datetime | None, transitions: int) -> dict[str, Any]:
        now = _fmt(_now())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                "acquireTime": _fmt(acquire) if acquire else now, "renewTime": now, "leaseTransitions": transitions}

    def try_acquire(self) -> bool:
        lease = self.kube.get_or_none(self.path)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(None, 0)}
            try:
                self.kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body)
                return True
            except ApiError as exc:
                if exc.status == 409:
                    return False
                raise
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = spec.get("renewTime")
        expired = renewed is None or (_now() - _parse(renewed)).total_seconds() > int(spec.get("leaseDurationSeconds") or self.duration)
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquire = _parse(spec["acquireTime"]) if holder == self.identity and spec.get("acquireTime") else None
        lease["spec"] = self._spec(acquire, transitions)
        try:
            self.kube.request("PUT", self.path, lease)
            return True
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this process holds the Lease (True) or ``stop`` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            try:
                if self.try_acquire():
                    log.info("leader election: acquired", extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity})
                    return True
            except (ApiError, OSError) as exc:
                log.warning("leader election: cannot reach the Lease", extra={"error": str(exc)})
            if not waiting_logged:
                log.info("leader election: another replica holds the Lease; waiting", extra={"lease": f"{self.namespace}/{self.name}"})
                waiting_logged = True
            stop.wait(self.renew)
        return False

    def keep(self) -> threading.Thread:
        """Renew in a thread; sets ``lost`` when the Lease could not be renewed in time."""

        def loop() -> None:
            last_ok = time.monotonic()
            while not self._stop.wait(self.renew):
                try:
                    if self.try_acquire():
                        last_ok = time.monotonic()
                        continue
                    log.error("leader election: the Lease was taken by another replica")
                except (ApiError, OSError) as exc:
                    log.warning("leader election: renewal failed", extra={"error": str(exc)})
                    if time.monotonic() - last_ok < self.duration - self.renew:
                        continue
                self.lost.set()
                self.on_lost()
                return

        thread = threading.Thread(target=loop, name="lease", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the Lease up on a clean shutdown so the next replica need not wait for expiry."""
        self._stop.set()
        try:
            lease = self.kube.get_or_none(self.path)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["renewTime"] = None
                self.kube.request("PUT", self.path, lease)
        except (ApiError, OSError) as exc:
            log.warning("leader election: release failed", extra={"error": str(exc)})
