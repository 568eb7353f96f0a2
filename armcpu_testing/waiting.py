"""Polling for a condition: tests, the demo and their harnesses wait on the API server this way."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError, so pytest reports it as a failure)."""


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.2) -> Any:
    """The first truthy value of ``predicate()``, polled every ``interval`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{what} not reached within {timeout}s")
        time.sleep(interval)
