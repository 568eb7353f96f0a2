"""The helpers' SIGTERM handling: a signal sent the moment the "running until SIGTERM" line is read is a normal end.

CI saw ``python -m armcpu_testing.controlplane`` exit 143 instead of 0: the line was printed before the
wait began, and a reader that signalled at once hit the gap. Here the writer itself sends the signal
while the line is being written, which is the earliest any reader could.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time

import pytest

from armcpu_testing.signals import Stopped, stopping_on_signals, wait_until_stopped


class _SignallingOnWrite(io.StringIO):
    """A stdout whose first write sends ``signum`` to this process, as a reader of the line would."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum
        self.sent = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        return written


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_sent_as_the_announcement_is_read_ends_the_wait_normally(signum: int) -> None:
    out = _SignallingOnWrite(signum)
    with stopping_on_signals(), contextlib.redirect_stdout(out):
        wait_until_stopped("running until SIGTERM")  # would raise Stopped if the print came before the wait
    assert out.sent and "running until SIGTERM" in out.getvalue()


def test_a_signal_before_the_wait_is_a_stop_not_a_normal_end() -> None:
    with pytest.raises(Stopped) as stopped, stopping_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # the handler runs at the latest here
    assert stopped.value.signum == signal.SIGTERM


def test_a_second_signal_does_not_cut_the_cleanup_short() -> None:
    cleaned = []
    with pytest.raises(Stopped), stopping_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        finally:  # the way out, as the context managers that stop etcd and kube-apiserver run it
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)  # a handler would run here
            cleaned.append(True)
    assert cleaned == [True]


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stopping_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
