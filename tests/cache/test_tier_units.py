"""The shared tiers' pure parts: rendezvous ranking, the circuit breaker, and how a
parent is dialled."""

from __future__ import annotations

from collections import Counter

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gateway.cache.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from gateway.cache.rendezvous import ranked
from gateway.cache.tiers import parent_fetcher

PARENTS = ["http://cg1:3130", "http://cg2:3130", "http://cg3:3130"]


def test_every_child_ranks_the_parents_alike_and_keys_spread_over_them():
    keys = [f"repo1.maven.org/a/{i}.jar" for i in range(3000)]
    owners = Counter(ranked(key, PARENTS)[0] for key in keys)
    assert set(owners) == set(PARENTS)
    assert min(owners.values()) > 800, owners  # ~1000 each
    assert all(ranked(key, PARENTS) == ranked(key, list(reversed(PARENTS))) for key in keys[:50])


def test_a_parent_gone_moves_only_its_own_keys_to_the_next_in_rank():
    keys = [f"pypi.org/simple/p{i}/" for i in range(2000)]
    for key in keys:
        before = ranked(key, PARENTS)
        after = ranked(key, [p for p in PARENTS if p != PARENTS[0]])
        assert after[0] == (before[1] if before[0] == PARENTS[0] else before[0])


def test_a_breaker_opens_on_a_failure_and_refuses_until_its_back_off_ends():
    clock = Clock()
    breaker = Breaker(clock.seconds, base=5, limit=20)
    assert breaker.allow() and breaker.state == CLOSED
    breaker.failed()
    assert breaker.state == OPEN and not breaker.allow()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow(), "one probe per back-off, not a stampede"
    breaker.succeeded()
    assert breaker.state == CLOSED and breaker.allow()


def test_a_failed_probe_doubles_the_back_off_up_to_the_limit():
    clock = Clock()
    breaker = Breaker(clock.seconds, base=5, limit=12)
    breaker.failed()
    waits = []
    for _ in range(3):
        start = clock.seconds()
        while not breaker.allow():
            clock.advance(1)
        waits.append(clock.seconds() - start)
        breaker.failed()
    assert waits == [5, 10, 12]
    assert breaker.describe()["failures"] == 4 and breaker.describe()["opened"] == 4


def test_a_late_failure_while_open_does_not_push_the_probe_back():
    clock = Clock()
    breaker = Breaker(clock.seconds, base=5)
    breaker.failed()
    clock.advance(3)
    breaker.failed()  # a request sent before it opened
    clock.advance(2)
    assert breaker.allow()


@pytest.mark.parametrize("url, host", [("http://127.0.0.1:3130", "127.0.0.1"),
                                       ("http://[::1]:3130", "::1")])
def test_a_parent_named_by_address_is_dialled_at_once_and_a_refusal_fails_at_once(url, host):
    """No name lookup and no attempt delay: a dead parent costs its first request nothing
    but the refused connect, before its breaker opens."""
    reactor = MemoryReactorClock()
    fetched = parent_fetcher(reactor, url, 5.0, 30.0).request(
        "GET", "http://pypi.org/simple/six/", {})
    failures: list[Failure] = []
    fetched.addErrback(failures.append)
    [(dialled, port, factory, timeout, _)] = reactor.tcpClients
    assert (dialled, port, timeout) == (host, 3130, 5.0)
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert len(failures) == 1 and failures[0].check(ConnectionRefusedError), failures
