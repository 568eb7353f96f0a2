"""Leader election against the real API server's Lease, with the faults a fleet has: replicas whose
wall clocks disagree by more than the Lease lasts, and a leader whose requests vanish into a
black hole (a partition that neither refuses nor answers). At no instant may two replicas lead.

Each replica is a :class:`LeaderElection` in a thread of this process, with its own wall clock;
the leading intervals are read off one monotonic clock, so an overlap is measured, not inferred."""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_operator.leader import LeaderElection
from armcpu_testing.controlplane import ControlPlane
from armcpu_testing.waiting import wait_for

pytestmark = pytest.mark.integration
NAMESPACE = "lease-clocks"
DURATION, DEADLINE, RETRY = 4, 2.5, 0.5
# CI: clocks 20 s apart and 2 slow-server rounds; the long mode (scripts/faults-long.sh) sets 30 s and 10 rounds.
SKEW = float(os.environ.get("ARMCPU_CLOCK_SKEW", "20"))
SLOW_ROUNDS = int(os.environ.get("ARMCPU_SLOW_LEADER_ROUNDS", "2"))


def _skewed(seconds: float) -> Callable[[], datetime.datetime]:
    return lambda: datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)


@dataclass
class Replica:
    """One candidate: acquires, then renews until it loses the Lease or is crashed."""

    election: LeaderElection
    intervals: list[tuple[float, float | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.election.acquire(self.stop):
                return
            self.intervals.append((time.monotonic(), None))
            self.election.renew_until_lost()
            self.intervals[-1] = (self.intervals[-1][0], time.monotonic())
            if self.stop.is_set():
                return
            self.election = dataclasses.replace(self.election, lost=threading.Event(), _stop=threading.Event(), _observed=None)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def crash(self) -> float:
        """Stop renewing without releasing (the process died); returns when."""
        self.stop.set()
        self.election.stop_renewing()
        return time.monotonic()

    @property
    def leading(self) -> bool:
        return bool(self.intervals) and self.intervals[-1][1] is None


def _overlaps(a: list[tuple[float, float | None]], b: list[tuple[float, float | None]]) -> list[str]:
    now = time.monotonic()
    return [f"[{s1:.1f}, {e1 or now:.1f}] and [{s2:.1f}, {e2 or now:.1f}]"
            for s1, e1 in a for s2, e2 in b if max(s1, s2) < min(e1 or now, e2 or now)]


def _election(kube: Kube, identity: str, lease: str, wall: Callable[[], datetime.datetime]) -> LeaderElection:
    return LeaderElection(kube, NAMESPACE, lease, identity, duration=DURATION, renew_deadline=DEADLINE, retry=RETRY, wall=wall)


@pytest.mark.parametrize("skew", [SKEW, -SKEW])
def test_replicas_with_clocks_apart_by_more_than_the_lease_never_both_lead(control_plane: ControlPlane, skew: float) -> None:
    """A standby whose clock is 20 s ahead (or behind) waits a full Lease duration after the record
    last changed, on its own clock; it takes over only when the leader stopped renewing."""
    control_plane.kubectl("create", "namespace", NAMESPACE, check=False)
    kube = Kube(load_kubeconfig(control_plane.kubeconfig))
    lease = f"skew-{'ahead' if skew > 0 else 'behind'}"
    first = Replica(_election(kube, "first", lease, _skewed(0)))
    first.start()
    wait_for(lambda: first.leading, 10, "the first replica leading")
    second = Replica(_election(kube, "second", lease, _skewed(skew)))
    second.start()
    time.sleep(3 * DURATION)
    assert not second.intervals, f"the standby with its clock {skew:+.0f}s off took a live Lease: {_overlaps(first.intervals, second.intervals)}"
    crashed = first.crash()
    wait_for(lambda: second.leading, DURATION + DEADLINE + 5, "the standby taking over after the leader stopped")
    took = second.intervals[0][0] - crashed
    assert took >= DURATION - RETRY - 0.5, f"taken {took:.1f}s after the last renewal could have landed: the Lease lasts {DURATION}s"
    assert not _overlaps(first.intervals, second.intervals)
    second.crash()


class BlackHole:
    """A TCP forwarder to the API server that, once frozen, accepts connections and never answers."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.frozen = threading.Event()
        self.delay = 0.0  # > 0: every chunk the server sends back is held this long first (a slow API server)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.frozen.is_set():
                self.held.append(client)  # neither refused nor answered
                continue
            server = socket.create_connection(self.upstream)
            for src, dst, slowed in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, slowed), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slowed: bool = False) -> None:
        try:
            while data := src.recv(65536):
                if self.frozen.is_set():
                    self.held += [src, dst]
                    return  # what is in flight stops here; the peer waits forever
                if slowed and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


@contextmanager
def black_hole(plane: ControlPlane) -> Iterator[BlackHole]:
    hole = BlackHole(("127.0.0.1", plane.api_port))
    try:
        yield hole
    finally:
        hole.close()


def test_a_leader_whose_requests_hang_stops_within_its_renew_deadline(control_plane: ControlPlane) -> None:
    """The client's request timeout (30 s) is twice the Lease: only the renew deadline bounds the
    fence. The partitioned leader stops within it, before the standby may take over."""
    control_plane.kubectl("create", "namespace", NAMESPACE, check=False)
    kube = Kube(load_kubeconfig(control_plane.kubeconfig))
    assert kube.timeout > 2 * DURATION
    with black_hole(control_plane) as hole:
        credentials = dataclasses.replace(kube.credentials, server=f"https://127.0.0.1:{hole.port}")
        first = Replica(_election(Kube(credentials), "partitioned", "hang", _skewed(0)))
        first.start()
        wait_for(lambda: first.leading, 10, "the first replica leading")
        second = Replica(_election(kube, "standby", "hang", _skewed(0)))
        second.start()
        time.sleep(2 * DURATION)
        assert not second.intervals
        frozen = time.monotonic()
        hole.frozen.set()
        wait_for(lambda: not first.leading, DEADLINE + RETRY + 2, "the partitioned leader stopping")
        stopped = first.intervals[-1][1]
        assert stopped is not None and stopped - frozen <= DEADLINE + RETRY + 1, f"stopped {stopped - frozen:.1f}s after the partition"
        wait_for(lambda: second.leading, DURATION + 10, "the standby taking over")
        assert not _overlaps(first.intervals, second.intervals), "two leaders at once"
        first.crash()
        second.crash()



def test_a_slow_api_server_and_clocks_apart_never_make_two_leaders(control_plane: ControlPlane) -> None:
    """Two replicas whose wall clocks are ``SKEW`` seconds apart, each reaching the API server through
    its own proxy. Round after round, the current leader's proxy starts holding every response past
    the renew deadline (the server is slow, not gone): the leader must stop within its deadline, the
    other take over only after the Lease, and at no instant may both lead."""
    control_plane.kubectl("create", "namespace", NAMESPACE, check=False)
    kube = Kube(load_kubeconfig(control_plane.kubeconfig))
    rng = random.Random(SLOW_ROUNDS)
    with black_hole(control_plane) as hole_a, black_hole(control_plane) as hole_b:
        replicas = []
        for name, hole, skew in (("slow-a", hole_a, 0.0), ("slow-b", hole_b, SKEW)):
            credentials = dataclasses.replace(kube.credentials, server=f"https://127.0.0.1:{hole.port}")
            replicas.append((Replica(_election(Kube(credentials), name, "slow", _skewed(skew))), hole))
        for replica, _ in replicas:
            replica.start()
        wait_for(lambda: any(r.leading for r, _ in replicas), 15, "a leader")
        for round_ in range(SLOW_ROUNDS):
            leader, hole = next((r, h) for r, h in replicas if r.leading)
            other = next(r for r, _ in replicas if r is not leader)
            hole.delay = DEADLINE + rng.uniform(0.5, 2.0)
            slowed = time.monotonic()
            wait_for(lambda leader=leader: not leader.leading, DEADLINE + RETRY + hole.delay + 3, f"round {round_}: the slowed leader stopping")
            stopped = leader.intervals[-1][1]
            assert stopped is not None and stopped - slowed <= DEADLINE + hole.delay + RETRY + 1, f"stopped {stopped - slowed:.1f}s after"
            wait_for(lambda other=other: other.leading, DURATION + DEADLINE + 10, f"round {round_}: the other replica taking over")
            hole.delay = 0.0
            assert not _overlaps(replicas[0][0].intervals, replicas[1][0].intervals), f"round {round_}: two leaders at once"
        time.sleep(DURATION)
        assert not _overlaps(replicas[0][0].intervals, replicas[1][0].intervals), "two leaders at once"
        assert sum(len(r.intervals) for r, _ in replicas) >= SLOW_ROUNDS + 1
        for replica, _ in replicas:
            replica.crash()
