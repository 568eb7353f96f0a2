"""One place decides what a failed request means, and a failing model backs off on its own."""

from __future__ import annotations

import pytest

from armcpu_k8s.kube import ApiError, outcome
from armcpu_operator.reconciler import RETRY_MAX, retry_delay


@pytest.mark.parametrize(("failure", "meaning"), [
    (ApiError(404, "NotFound", "", "PATCH", "/x"), "gone"),
    (ApiError(409, "Conflict", "", "PUT", "/x"), "conflict"),
    (ApiError(422, "Invalid", "the test operation failed", "PATCH", "/x"), "conflict"),
    (ApiError(429, "TooManyRequests", "", "GET", "/x", retry_after=1.0), "retry"),
    (ApiError(503, "ServiceUnavailable", "", "GET", "/x"), "retry"),
    (ApiError(403, "Forbidden", "", "PATCH", "/x"), "refused"),
    (ApiError(400, "BadRequest", "", "PATCH", "/x"), "refused"),
    (ConnectionResetError("reset"), "retry"),
    (TimeoutError("timed out"), "retry"),
])
def test_each_failure_has_one_meaning(failure: BaseException, meaning: str) -> None:
    assert outcome(failure) == meaning


def test_retries_back_off_exponentially_to_a_ceiling() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0]
    assert delays == sorted(delays) and delays[-1] == RETRY_MAX
