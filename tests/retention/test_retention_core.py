"""The shredder's pure core on the in-memory store: injected clock, no servers."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stream.retention.core import (
    ErasureConflictError,
    MemoryShredStore,
    MemorySink,
    Shredder,
    ShredderError,
    candidate_epochs,
    parse_erasure_request,
    sign_erasure_request,
)
from stream.retention.receipts import dedupe, receipt_id
from stream.schema import output_validator
from tests.support.clock import Clock

E, R = 100, 1000  # epoch and retention seconds
VALID = output_validator("audit-receipt.v1")




def expire_at(epoch: int) -> int:
    return (epoch + 1) * E + R




def make(clock: Clock, *, worker: str = "w1", store: MemoryShredStore | None = None, batch: int = 3,
         **kw) -> tuple[Shredder, MemoryShredStore, MemorySink]:
    store = store or MemoryShredStore(Clock(0))
    sink = MemorySink()
    return Shredder(store, sink, worker=worker, epoch_seconds=E, retention_seconds=R, clock=clock,
                    batch_size=batch, **kw), store, sink


def seed(store: MemoryShredStore, subjects: list[str], epochs: list[int]) -> None:
    for s in subjects:
        for e in epochs:
            store.add_key(s, e, f"{abs(hash((s, e))) % 16**16:016x}", expire_at(e))


def test_due_keys_are_destroyed_with_one_receipt_each_and_newer_epochs_survive() -> None:
    clock = Clock(0)
    shredder, store, sink = make(clock)
    seed(store, ["tokA", "tokB"], [1, 2, 3])
    clock.t = expire_at(2)  # epochs 1 and 2 are due
    assert shredder.shred_due() == 4
    assert {(r["subject"], r["epoch"]) for r in sink.receipts} == {(s, e) for s in ("tokA", "tokB") for e in (1, 2)}
    for s in ("tokA", "tokB"):
        for e in (1, 2):
            assert store.live(s, e) == {"dek": False, "memo": False, "budget": False}
        assert store.live(s, 3) == {"dek": True, "memo": True, "budget": True}
    assert all(not VALID(r) for r in sink.receipts), [VALID(r) for r in sink.receipts]
    assert {r["reason"] for r in sink.receipts} == {"retention"}
    assert all(r["key_id"] and r["expired_before_shred"] is False for r in sink.receipts)
    assert store.pending() == []
    assert set(store.published) == {"tokA:1", "tokA:2", "tokB:1", "tokB:2"}
    # idempotent: nothing more to do
    assert shredder.shred_due() == 0 and len(sink.receipts) == 4


def test_receipt_time_and_ids_are_deterministic() -> None:
    clock = Clock(0)
    shredder, store, sink = make(clock)
    seed(store, ["tokA"], [1])
    clock.t = 1_800_000_000.25
    shredder.shred_due()
    (r,) = sink.receipts
    assert r["at"] == "2027-01-15T08:00:00.250Z"
    assert r["receipt_id"] == receipt_id("key_shredded", "retention", "tokA", 1, r["key_id"], None)
    assert r["worker"] == "w1" and r["deadline"] == expire_at(1)


def test_key_already_expired_by_the_store_yields_exactly_one_receipt_with_null_key_id() -> None:
    clock = Clock(0)
    shredder, store, sink = make(clock)
    seed(store, ["tokA"], [1])
    clock.t = expire_at(1) + 5
    store.clock = clock  # Redis's own expiry got there first: the DEK reads as absent
    assert shredder.shred_due() == 1
    (r,) = sink.receipts
    assert r["key_id"] is None and r["expired_before_shred"] is True
    assert not VALID(r)
    assert shredder.shred_due() == 0 and len(sink.receipts) == 1


def test_failed_delivery_leaves_the_outbox_and_a_restart_finishes_it_with_the_same_receipts() -> None:
    clock = Clock(0)
    shredder, store, sink = make(clock, batch=10)
    seed(store, ["tokA", "tokB"], [1])
    clock.t = expire_at(1)
    sink.fail_next = 1
    with pytest.raises(ShredderError):
        shredder.shred_due()
    # keys are destroyed already (claim + destroy is one step); their receipts wait in the outbox
    assert store.live("tokA", 1)["dek"] is False
    assert len(store.pending()) == 2 and sink.receipts == []
    # "restart": a new instance with the same worker id finishes them at once
    again, _, sink2 = make(clock, store=store)
    assert again.recover() == 2
    assert len(sink2.receipts) == 2 and store.pending() == []
    assert {r["subject"] for r in sink2.receipts} == {"tokA", "tokB"}


def test_no_receipt_goes_out_before_the_store_confirmed_the_deletes_durable() -> None:
    """A receipt (and the erasure's commit after it) says keys are gone: the store must have made the deletes
    durable first (Redis: WAITAOF). Not confirmed: nothing is delivered, the outbox keeps the entries, and
    the retry (the engine's hold or tick retry) delivers them once it is."""
    from stream.errors import KeyUnavailableError

    clock = Clock(0)
    shredder, store, sink = make(clock, batch=10)
    seed(store, ["tokA", "tokB"], [1])
    clock.t = expire_at(1)
    store.fail_sync = 1
    with pytest.raises(KeyUnavailableError):
        shredder.shred_due()
    assert sink.receipts == [] and len(store.pending()) == 2 and store.syncs == 1
    assert shredder.recover() == 2 and store.syncs == 2
    assert {r["subject"] for r in sink.receipts} == {"tokA", "tokB"}
    store.fail_sync = 1
    with pytest.raises(KeyUnavailableError):
        shredder.erase("tokC", "req-sync")
    assert sink.receipts and all(r.get("request_id") != "req-sync" for r in sink.receipts)
    outcome = shredder.erase("tokC", "req-sync")  # the redelivered request
    assert outcome.repeated and [r["request_id"] for r in sink.receipts if r.get("request_id") == "req-sync"]


def test_other_instances_take_over_only_after_the_lease() -> None:
    clock = Clock(0)
    a, store, sink_a = make(clock, worker="a", lease_seconds=30)
    seed(store, ["tokA"], [1])
    clock.t = expire_at(1)
    sink_a.fail_next = 1
    with pytest.raises(ShredderError):
        a.shred_due()
    b, _, sink_b = make(clock, worker="b", store=store, lease_seconds=30)
    assert b.recover() == 0  # a's lease is still running
    clock.t += 31
    assert b.recover() == 1
    assert sink_b.receipts[0]["worker"] == "a"  # the receipt is the one a would have written
    assert a.recover() == 0


def test_two_shredders_on_one_store_never_double_claim() -> None:
    clock = Clock(0)
    a, store, sink_a = make(clock, worker="a", batch=2)
    b, _, sink_b = make(clock, worker="b", store=store, batch=2)
    seed(store, [f"tok{i}" for i in range(7)], [1, 2])
    clock.t = expire_at(2)
    while a.shred_due(max_batches=1) + b.shred_due(max_batches=1):
        pass
    ids = [r["receipt_id"] for r in sink_a.receipts + sink_b.receipts]
    assert len(ids) == 14 == len(set(ids))


def test_erasure_destroys_every_epoch_of_one_person_only_and_is_idempotent() -> None:
    clock = Clock(0)
    shredder, store, sink = make(clock, tombstone_topics=["people.by.token"])
    seed(store, ["tokA", "tokB"], [8, 9, 10])
    clock.t = 10 * E + 5
    out = shredder.erase("tokA", "req-1", requested_at="2026-01-01T00:00:00Z")
    assert out.keys_shredded == 3 and not out.repeated
    for e in (8, 9, 10):
        assert not any(store.live("tokA", e).values())
        assert all(store.live("tokB", e).values())
    kinds = [(r["kind"], r["reason"], r["request_id"]) for r in sink.receipts]
    assert kinds.count(("key_shredded", "erasure", "req-1")) == 3
    assert kinds.count(("erasure", "erasure", "req-1")) == 1
    summary = next(r for r in sink.receipts if r["kind"] == "erasure")
    assert summary["keys_shredded"] == 3 and summary["status"] == "completed" and summary["subject"] == "tokA"
    assert all(not VALID(r) for r in sink.receipts)
    assert sink.tombstones == [("people.by.token", b"tokA")]
    assert "tokA:*" in store.published
    # the same request again: same summary (same id and content), nothing else touched
    again = shredder.erase("tokA", "req-1", requested_at="2026-01-01T00:00:00Z")
    assert again.repeated and again.keys_shredded == 3
    assert sink.receipts[-1] == summary
    assert len(dedupe(sink.receipts)) == 4


def test_erasure_of_an_unknown_person_still_gets_a_receipt() -> None:
    clock = Clock(5000)
    shredder, _, sink = make(clock)
    out = shredder.erase("tokNobody", "req-2")
    assert out.keys_shredded == 0
    (r,) = sink.receipts
    assert r["kind"] == "erasure" and r["keys_shredded"] == 0 and not VALID(r)


def test_erasure_request_id_reuse_for_another_person_is_refused() -> None:
    clock = Clock(5000)
    shredder, store, _ = make(clock)
    seed(store, ["tokB"], [49])
    shredder.erase("tokA", "req-3")
    with pytest.raises(ErasureConflictError):
        shredder.erase("tokB", "req-3")
    assert all(store.live("tokB", 49).values())


def test_erasure_crash_before_the_summary_is_completed_by_the_redelivered_request() -> None:
    clock = Clock(0)
    shredder, store, sink = make(clock)
    seed(store, ["tokA"], [8, 9])
    clock.t = 9 * E
    sink.fail_next = 1
    with pytest.raises(ShredderError):
        shredder.erase("tokA", "req-4")
    # a restart recovers the per-key receipts first; the redelivered request then adds the summary
    again, _, sink2 = make(clock, store=store)
    again.recover()
    again.erase("tokA", "req-4")
    kinds = sorted(r["kind"] for r in sink2.receipts)
    assert kinds == ["erasure", "key_shredded", "key_shredded"]
    assert next(r for r in sink2.receipts if r["kind"] == "erasure")["keys_shredded"] == 2


def test_rejected_requests_get_a_rejected_receipt() -> None:
    shredder, _, sink = make(Clock(10))
    r = shredder.reject(request_id=None, error="invalid_request", discriminator="privacy.erasure/0/7")
    assert r["status"] == "rejected" and r["subject"] is None and not VALID(r)
    assert r["kind"] == "erasure_rejected" and r["request_id"] is None
    assert sink.receipts == [r]


@pytest.mark.parametrize("value", [b"", b"nope", b"[]", b'{"user_id": "u1"}', b'{"request_id": "r", "user_id": ""}',
                                   b'{"request_id": "bad id", "user_id": "u"}', b'{"request_id": "r"}',
                                   b'{"request_id": "r", "user_id": "u", "subject": "t"}',
                                   b'{"request_id": "r", "subject": "not a token"}'])
def test_malformed_erasure_requests_are_refused_without_echoing_them(value: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ShredderError) as info:
        parse_erasure_request(value, key.public_key())
    assert "u1" not in str(info.value) and "not a token" not in str(info.value)


def test_erasure_request_parses() -> None:
    key = Ed25519PrivateKey.generate()
    doc = sign_erasure_request(key, "r-1", user_id="usr_1", requested_at="2026-01-01T00:00:00Z", audience="default")
    req = parse_erasure_request(orjson.dumps(doc), key.public_key())
    assert (req.request_id, req.user_id, req.subject) == ("r-1", "usr_1", None)
    assert "usr_1" not in repr(req)


def test_candidate_epochs_cover_every_epoch_whose_keys_can_exist() -> None:
    now = 10_000
    eps = candidate_epochs(now, epoch_seconds=E, retention_seconds=R)
    live = [e for e in range(0, 200) if expire_at(e) > now and e * E <= now]
    assert set(live) <= set(eps)


def test_lead_destroys_keys_shortly_before_their_deadline_only() -> None:
    clock = Clock(0)
    shredder, store, sink = make(clock, lead_seconds=10)
    seed(store, ["tokA"], [1, 2])
    clock.t = expire_at(1) - 5  # within the lead of epoch 1's deadline, far from epoch 2's
    assert shredder.shred_due() == 1
    assert sink.receipts[0]["epoch"] == 1 and sink.receipts[0]["key_id"]
    assert all(store.live("tokA", 2).values())


def test_erasure_finds_keys_outside_the_retention_window_through_the_deadline_index() -> None:
    """Keys the candidate epochs miss (created under a longer retention, or by a gateway whose clock
    ran ahead) are found by the deadline-index scan alone: without it they would outlive the erasure."""
    clock = Clock(0)
    shredder, store, sink = make(clock)
    now = 50 * E + 5
    window = set(candidate_epochs(now, epoch_seconds=E, retention_seconds=R))
    old, ahead = min(window) - 5, max(window) + 5
    store.add_key("tokA", old, "a" * 16, now + 10 * R)  # a retention that was longer when it was made
    store.add_key("tokA", ahead, "b" * 16, expire_at(ahead))
    store.add_key("tokA", 50, "c" * 16, expire_at(50))
    store.add_key("tokB", old, "d" * 16, now + 10 * R)
    clock.t = now
    out = shredder.erase("tokA", "req-window")
    assert out.keys_shredded == 3
    for e in (old, ahead, 50):
        assert not any(store.live("tokA", e).values()), e
    assert all(store.live("tokB", old).values())
    assert {r["epoch"] for r in sink.receipts if r["kind"] == "key_shredded"} == {old, ahead, 50}
