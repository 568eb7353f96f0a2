"""Stopping the long-running helpers (the demo, a control plane left up) on SIGTERM as on Ctrl-C.

Python's default SIGTERM action ends the process at once: no ``finally`` runs, so etcd, kube-apiserver,
kube-scheduler, the agents and the operator were left running (``armcpu-demo --keep`` waited with
``signal.sigwait`` without blocking the signals first, so SIGTERM still took the default action).
Here SIGTERM and SIGHUP raise :class:`Stopped` in the main thread instead, and every context manager
on the way out stops what it started.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """Someone asked the process to stop (SIGTERM, SIGHUP): not an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, _frame: FrameType | None) -> None:
    # The way out stops what was started, which can take a while (kube-apiserver drains its watches): a
    # second SIGTERM must not cut it short and leak the rest (seen: a kube-apiserver left running).
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Within this block the first SIGTERM or SIGHUP raises :class:`Stopped` and later ones are ignored
    until the block ends, so the cleanup on the way out completes (Ctrl-C raises KeyboardInterrupt as usual)."""
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_until_stopped(announcement: str) -> None:
    """Print ``announcement``, then sleep until Ctrl-C, SIGTERM or SIGHUP (inside :func:`stopping_on_signals`).

    The announcement is printed inside the waiting block: whoever reads it and signals at once (a test,
    a supervisor) must get the normal end, not a ``Stopped`` raised between the print and the wait
    (CI saw exit 143 instead of 0 that way).
    """
    with contextlib.suppress(KeyboardInterrupt, Stopped):
        print(announcement, flush=True)
        while True:
            signal.pause()
