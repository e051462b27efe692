"""The key-store identity guard's state machine, with a fake probe (no I/O)."""

from __future__ import annotations

import logging

import pytest

from stream.crypto.deks import DekProvider, MemoryKeyStore
from stream.crypto.keyring import Keyring
from stream.crypto.keystore import KeyStoreGuard, Probe, StoreIdentity
from stream.crypto.kms import LocalKMS
from stream.errors import KeyUnavailableError

A = StoreIdentity("m1", "run1", "rep1")
B = StoreIdentity("m2", "run2", "rep2")
C = StoreIdentity("m3", "run3", "rep3")


class FakeProbe:
    """Answers with ``identity``; ``durable`` answers are taken from ``fsync`` (None = unsupported)."""

    def __init__(self, identity: StoreIdentity = A) -> None:
        self.identity = identity
        self.fsync: list[bool | None] = []
        self.asked_durable: list[bool] = []
        self.fail = False
        self.rearmed = 0

    def probe(self, durable: bool) -> Probe:
        if self.fail:
            raise KeyUnavailableError("down")
        self.asked_durable.append(durable)
        answer = (self.fsync.pop(0) if self.fsync else True) if durable else None
        return Probe(self.identity, answer)

    def rearm(self) -> None:
        self.rearmed += 1


def make_guard(*, learn: bool = True) -> tuple[KeyStoreGuard, FakeProbe, list[str]]:
    """A guard with one registered cache; ``learn``: its identity already known (A)."""
    probe = FakeProbe()
    guard = KeyStoreGuard(probe)
    dropped: list[str] = []
    guard.on_reset(lambda: dropped.append("cache"))
    if learn:
        assert guard.check()
        dropped.clear()
    return guard, probe, dropped


def test_first_batch_learns_the_identity_before_the_work() -> None:
    guard, _probe, dropped = make_guard(learn=False)
    seen: list[tuple[StoreIdentity | None, int]] = []
    assert guard.run(lambda: seen.append((guard.identity, len(dropped))) or "ok") == "ok"
    # known before any cached key could be used; what was cached before it was known is dropped
    assert seen == [(A, 1)]
    assert guard.checks == 2 and guard.resets == 0 and dropped == ["cache"]


def test_steady_state_costs_one_probe_per_batch() -> None:
    guard, _probe, _ = make_guard()
    guard.run(lambda: None)
    before = guard.checks
    for _ in range(10):
        guard.run(lambda: None)
    assert guard.checks - before == 10


def test_change_between_batches_drops_caches_and_redoes_the_batch() -> None:
    guard, probe, dropped = make_guard()
    guard.run(lambda: None)
    probe.identity = B  # Redis restarted empty between two batches
    calls: list[int] = []
    result = guard.run(lambda: calls.append(len(dropped)) or len(calls))
    assert calls == [0, 1]  # the first attempt (stale cache) is discarded, the redo runs after the reset
    assert result == 2
    assert guard.resets == 1 and dropped == ["cache"] and guard.identity == B
    assert probe.rearmed == 1


def test_change_during_the_work_is_caught_after_it() -> None:
    guard, probe, dropped = make_guard()
    guard.run(lambda: None)
    attempts: list[str] = []

    def work() -> str:
        attempts.append("x")
        if len(attempts) == 1:
            probe.identity = B  # Redis lost data while the batch was being protected
        return f"attempt{len(attempts)}"

    assert guard.run(work) == "attempt2"
    assert guard.resets == 1 and dropped == ["cache"]


def test_identity_that_keeps_changing_fails_closed() -> None:
    guard, probe, dropped = make_guard()
    guard.run(lambda: None)
    identities = iter([B, C, A, B, C])

    def work() -> None:
        probe.identity = next(identities)

    with pytest.raises(KeyUnavailableError):
        guard.run(work)
    assert guard.resets == guard.max_attempts == len(dropped)


def test_reset_from_another_thread_invalidates_the_running_batch() -> None:
    guard, _probe, dropped = make_guard()
    guard.run(lambda: None)
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            guard.reset("test")  # e.g. another component sharing the guard saw the change first

    guard.run(work)
    assert len(calls) == 2 and guard.resets == 1 and dropped == ["cache"]


def test_unreachable_store_propagates_key_unavailable() -> None:
    guard, probe, _ = make_guard()
    probe.fail = True
    with pytest.raises(KeyUnavailableError):
        guard.run(lambda: "never returned")


def test_durability_is_asked_only_after_loads_and_retried_without_redoing_the_work() -> None:
    guard, probe, _ = make_guard()
    guard.run(lambda: None)
    assert probe.asked_durable == [False, False]  # nothing loaded: no WAITAOF
    probe.fsync = [False, True]  # first WAITAOF times out, the second confirms
    calls: list[int] = []
    assert guard.run(lambda: calls.append(1) or guard.note_loaded() or "out") == "out"
    assert calls == [1]  # the batch is not redone, only the confirmation is asked again
    assert probe.asked_durable[-2:] == [True, True]
    guard.run(lambda: None)
    assert probe.asked_durable[-1] is False  # confirmed: no longer pending


def test_durability_never_confirmed_fails_closed_and_stays_pending() -> None:
    guard, probe, _ = make_guard()
    guard.run(lambda: None)
    probe.fsync = [False] * guard.max_attempts
    with pytest.raises(KeyUnavailableError):
        guard.run(guard.note_loaded)
    guard.run(lambda: None)  # the held batch, retried: hits only, yet the wait is asked again
    assert probe.asked_durable[-1] is True


def test_each_unconfirmed_fsync_is_counted_and_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """The guard asks again when WAITAOF is not confirmed in time: every such answer is counted
    (``unconfirmed``) and logged, once per ``log_interval`` with the count suppressed since."""
    now = [0.0]
    probe = FakeProbe()
    guard = KeyStoreGuard(probe, log_interval=10.0, clock=lambda: now[0])
    guard.run(lambda: None)

    def unconfirmed_logs() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "streamgate.keystore" and "WAITAOF" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="streamgate.keystore"):
        probe.fsync = [False, False, True]  # two tries time out, the third confirms
        assert guard.run(lambda: guard.note_loaded() or "out") == "out"
        assert guard.unconfirmed == 2 and guard.resets == 0  # the 2nd is counted, its log rate-limited
        assert [r.count for r in unconfirmed_logs()] == [1]  # type: ignore[attr-defined]
        assert not hasattr(unconfirmed_logs()[0], "suppressed")
        now[0] += 10.0
        probe.fsync = [False] * guard.max_attempts  # never confirmed: held after max_attempts tries
        with pytest.raises(KeyUnavailableError):
            guard.run(guard.note_loaded)
    assert guard.unconfirmed == 2 + guard.max_attempts
    logs = unconfirmed_logs()
    assert [r.count for r in logs] == [1, 3]  # type: ignore[attr-defined]
    assert logs[1].suppressed == 1  # type: ignore[attr-defined]
    assert logs[1].levelno == logging.WARNING and "held after 3 tries" in logs[1].getMessage()
    assert "unconfirmed=5" in repr(guard)


def test_unsupported_durability_does_not_hold_batches() -> None:
    guard, probe, _ = make_guard()
    probe.fsync = [None]
    assert guard.run(lambda: guard.note_loaded() or 1) == 1


def test_one_warning_per_change(caplog: pytest.LogCaptureFixture) -> None:
    guard, probe, _ = make_guard()
    guard.run(lambda: None)
    probe.identity = B
    with caplog.at_level(logging.WARNING, logger="streamgate.keystore"):
        guard.run(lambda: None)
        guard.run(lambda: None)
    warnings = [r for r in caplog.records if r.name == "streamgate.keystore"]
    assert len(warnings) == 1
    assert warnings[0].changed == "marker,run_id,replid"  # type: ignore[attr-defined]
    assert warnings[0].keystore_resets == 1  # type: ignore[attr-defined]


def test_provider_registers_its_cache_and_reports_loads() -> None:
    probe = FakeProbe()
    guard = KeyStoreGuard(probe)
    clock = lambda: 20000 * 86400.0  # noqa: E731
    deks = DekProvider(MemoryKeyStore(clock), LocalKMS(Keyring.generate()), epoch_seconds=86400,
                       retention_seconds=86400, max_staleness_seconds=30, max_entries=100, clock=clock,
                       guard=guard)
    assert deks.guard is guard
    guard.run(lambda: deks.keys_for(["tk1_a", "tk1_b"], 20000))
    assert deks.cache_size == 2 and probe.asked_durable[-1] is True  # keys loaded: durability asked
    guard.run(lambda: deks.keys_for(["tk1_a"], 20000))
    assert probe.asked_durable[-1] is False  # cache hits only
    probe.identity = B
    guard.run(lambda: None)
    assert deks.cache_size == 0 and guard.resets == 1


def test_max_attempts_validated() -> None:
    with pytest.raises(ValueError):
        KeyStoreGuard(FakeProbe(), max_attempts=0)


def test_a_load_noted_during_a_probe_is_confirmed_by_the_next_one() -> None:
    guard, probe, _ = make_guard()
    inner = probe.probe

    def probe_while_another_batch_loads(durable: bool) -> Probe:
        guard.note_loaded()
        return inner(durable)

    probe.probe = probe_while_another_batch_loads  # type: ignore[method-assign]
    assert guard.check()
    probe.probe = inner  # type: ignore[method-assign]
    assert guard.check() and probe.asked_durable[-1] is True
    assert guard.check() and probe.asked_durable[-1] is False


class CountingProbe(FakeProbe):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def probe(self, durable: bool) -> Probe:
        self.calls += 1
        return super().probe(durable)


@pytest.mark.parametrize("down", ["before the work", "during the work", "after the work"])
def test_an_unreachable_store_surfaces_at_once_to_the_engine_not_retried_here(down: str) -> None:
    """The guard retries on two things only: the identity changed (the work is redone) and the fsync
    was not confirmed (the probe is asked again). A store that is down is neither: the first
    KeyUnavailableError goes up at once (the engine's hold is the one retry policy for Redis)."""
    probe = CountingProbe()
    guard = KeyStoreGuard(probe)
    if down != "before the work":
        guard.check()
    probe.calls = 0
    works: list[int] = []

    def work() -> str:
        works.append(1)
        if down == "during the work":
            raise KeyUnavailableError("down")
        probe.fail = down == "after the work"
        return "out"

    probe.fail = down == "before the work"
    with pytest.raises(KeyUnavailableError):
        guard.run(work)
    assert len(works) == (0 if down == "before the work" else 1)
    assert probe.calls == (0 if down == "during the work" else 1)
    assert guard.resets == 0
