"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas (e.g. during a rollout)
never both write. kopf's peering is not a Lease and freezes equal-priority peers, so armcpu runs
kopf standalone and holds this Lease around it.

Expiry is judged as client-go judges it, from *this* process's monotonic clock: a candidate
remembers when it last saw the Lease record change, and takes the Lease only when the record has
stayed the same for leaseDurationSeconds. The holder's ``renewTime`` is written for people and
tools, never compared with the local clock, so replicas whose wall clocks disagree (by any amount)
still agree on who leads. Updates carry the resourceVersion read, so two candidates racing for an
expired Lease cannot both win (the loser gets 409).

The fence is bounded by the renew deadline: every renewal request is given at most what is left
of ``renew_deadline`` (measured from the start of the last renewal that landed), and a holder that
has not renewed within it stops the operator. A candidate waits ``duration`` from when it *saw* the
last renewal, which is later than that renewal's start, so with ``renew_deadline < duration`` the
old holder has stopped before anyone else can start.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from armcpu_k8s.kube import CONFLICT, ApiError, Kube, outcome
from armcpu_k8s.resources import LEASES

log = logging.getLogger("armcpu.leader")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _fmt(ts: datetime.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(spec: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one renewal of a Lease: any change means its holder is alive (or a new one took it)."""
    return (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseTransitions"),
            spec.get("leaseDurationSeconds"))


@dataclass
class Observed:
    """The Lease record this process last saw, and when (on its monotonic clock) it first saw it."""

    record: tuple[Any, ...]
    seen_at: float


def expired(observed: Observed, now: float, duration: float) -> bool:
    """True when the record has not changed for ``duration`` seconds of the observer's own clock."""
    return now - observed.seen_at >= duration


@dataclass
class LeaderElection:
    kube: Kube
    namespace: str
    name: str
    identity: str
    duration: int = 15  # leaseDurationSeconds written into the Lease
    renew_deadline: float = 10.0  # a holder that has not renewed for this long stops (must be < duration)
    retry: float = 2.0  # seconds between renewals and between acquisition attempts
    on_lost: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.monotonic  # decisions: only this clock
    wall: Callable[[], datetime.datetime] = _utcnow  # the timestamps written into the Lease, for humans
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _observed: Observed | None = None

    def __post_init__(self) -> None:
        if not 0 < self.renew_deadline < self.duration:
            raise ValueError(f"renew deadline {self.renew_deadline}s must be shorter than the lease duration {self.duration}s")

    @property
    def path(self) -> str:
        return LEASES.item(self.name, self.namespace)

    def _spec(self, acquire: str | None, transitions: int) -> dict[str, Any]:
        now = _fmt(self.wall())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                "acquireTime": acquire or now, "renewTime": now, "leaseTransitions": transitions}

    def _observe(self, spec: dict[str, Any]) -> Observed:
        record = record_of(spec)
        if self._observed is None or self._observed.record != record:
            self._observed = Observed(record, self.clock())
        return self._observed

    def _client(self, deadline: float | None) -> Kube:
        """The client for one request: with a deadline, it waits no longer than what is left of it."""
        if deadline is None:
            return self.kube
        left = deadline - self.clock()
        if left <= 0:
            raise TimeoutError("the renew deadline passed")
        return dataclasses.replace(self.kube, timeout=left)

    def try_acquire(self, deadline: float | None = None) -> bool:
        """One attempt to take or renew the Lease; with ``deadline`` (on :attr:`clock`), both requests
        together wait no longer than until then."""
        lease = self._client(deadline).get_or_none(self.path)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(None, 0)}
            try:
                self._client(deadline).create(LEASES.collection(self.namespace), body)
                return True
            except ApiError as exc:
                if outcome(exc) == CONFLICT:  # another replica created it first
                    return False
                raise
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        observed = self._observe(spec)
        held_by_other = bool(holder) and holder != self.identity
        if held_by_other and not expired(observed, self.clock(), int(spec.get("leaseDurationSeconds") or self.duration)):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquire = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(acquire, transitions)
        try:
            written = self._client(deadline).request("PUT", self.path, lease)
        except ApiError as exc:
            if outcome(exc) == CONFLICT:  # another replica wrote it since we read it
                return False
            raise
        self._observe((written or lease).get("spec") or {})
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this process holds the Lease (True) or ``stop`` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            try:
                if self.try_acquire(deadline=self.clock() + self.renew_deadline):
                    log.info("leader election: acquired", extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity})
                    return True
            except (ApiError, OSError) as exc:
                log.warning("leader election: cannot reach the Lease", extra={"error": str(exc)})
            if not waiting_logged:
                log.info("leader election: another replica holds the Lease; waiting", extra={"lease": f"{self.namespace}/{self.name}"})
                waiting_logged = True
            stop.wait(self.retry)
        return False

    def renew_until_lost(self) -> None:
        """Renew every ``retry`` seconds until stopped; on a renewal that cannot land within the renew
        deadline, or a Lease taken by another replica, set ``lost`` and call ``on_lost``."""
        last_start = self.clock()  # acquire() just landed a write that started no earlier than this
        while not self._stop.wait(self.retry):
            started = self.clock()
            try:
                if self.try_acquire(deadline=last_start + self.renew_deadline):
                    last_start = started
                    continue
                log.error("leader election: the Lease was taken by another replica")
            except (ApiError, OSError) as exc:
                log.warning("leader election: renewal failed", extra={"error": str(exc)})
                if self.clock() - last_start < self.renew_deadline:
                    continue
            if self._stop.is_set():
                return
            log.error("leader election: lost the Lease", extra={"renew_deadline_seconds": self.renew_deadline})
            self.lost.set()
            self.on_lost()
            return

    def keep(self) -> threading.Thread:
        """Renew in a thread (see :meth:`renew_until_lost`)."""
        thread = threading.Thread(target=self.renew_until_lost, name="lease", daemon=True)
        thread.start()
        return thread

    def stop_renewing(self) -> None:
        self._stop.set()

    def release(self) -> None:
        """Give the Lease up on a clean shutdown so the next replica need not wait for expiry."""
        self._stop.set()
        if self.lost.is_set():
            return  # another replica may hold it by now
        try:
            lease = self.kube.get_or_none(self.path)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["renewTime"] = None
                self.kube.request("PUT", self.path, lease)
        except (ApiError, OSError) as exc:
            log.warning("leader election: release failed", extra={"error": str(exc)})
