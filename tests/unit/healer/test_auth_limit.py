"""The failure limiter's sliding window, on a clock the test moves."""

from __future__ import annotations

from healer.auth_limit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_past_its_limit_waits_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(per_client=2, total=100, window=60, clock=clock)
    limiter.failed("a")
    clock.now += 10
    assert limiter.retry_after("a") is None
    limiter.failed("a")
    assert limiter.retry_after("a") == 50
    assert limiter.retry_after("b") is None
    clock.now += 50
    assert limiter.retry_after("a") is None


def test_the_total_holds_every_client() -> None:
    clock = Clock()
    limiter = FailureLimiter(per_client=5, total=3, window=60, clock=clock)
    for client in ("a", "b", "c"):
        limiter.failed(client)
    assert limiter.retry_after("d") == 60
    clock.now += 60.5
    assert limiter.retry_after("d") is None


def test_forgotten_clients_do_not_pile_up() -> None:
    clock = Clock()
    limiter = FailureLimiter(per_client=5, total=3, window=1, clock=clock)
    for i in range(100):
        clock.now += 2
        limiter.failed(str(i))
    assert len(limiter._clients) <= 4
