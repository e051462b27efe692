"""Replays of signed erasure requests (issue 25): across deployments, at the edges of the window
derived from the idempotency record's life, after Redis lost the record (real Redis), and the
configurations where the window cannot hold, refused."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stream.retention.core import (
    ErasureRejectedError,
    MemoryShredStore,
    MemorySink,
    Shredder,
    erasure_window,
    parse_erasure_request,
    sign_erasure_request,
)
from stream.retention.receipts import rfc3339
from stream.storage.retention import RedisShredStore
from tests.support.fixtures import delete_prefixed_keys

KEY = Ed25519PrivateKey.generate()
E, R = 3600, 7200
T = 1_900_000_000.0


def signed(rid: str, at: float, audience: str = "production") -> bytes:
    return orjson.dumps(sign_erasure_request(KEY, rid, subject="tk1_A", requested_at=rfc3339(at), audience=audience))


def accept(raw: bytes, now: float, *, store, audience: str = "production"):  # type: ignore[no-untyped-def]
    """What the shredder does with a request (stream.apps.shredder: _erase_one), minus Kafka."""
    w = erasure_window(epoch_seconds=E, retention_seconds=R)
    return parse_erasure_request(raw, KEY.public_key(), now=now, max_age_seconds=w.max_age, skew_seconds=w.skew,
                                 audience=audience, not_before=store.erasure_floor(now))


def code(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ErasureRejectedError) as info:
        fn()
    return info.value.code


def test_a_request_signed_for_another_deployment_is_refused() -> None:
    store = MemoryShredStore(lambda: T)
    staging = signed("r-x", T, audience="staging")
    assert code(lambda: accept(staging, T, store=store)) == "wrong_audience"
    assert accept(staging, T, store=store, audience="staging").request_id == "r-x"
    stripped = orjson.loads(staging)
    stripped["audience"] = "production"  # re-labelled: the signature covers the audience
    assert code(lambda: accept(orjson.dumps(stripped), T, store=store)) == "unauthenticated"
    del stripped["audience"]
    assert code(lambda: accept(orjson.dumps(stripped), T, store=store)) == "unauthenticated"


def test_at_the_window_edges_a_replay_is_idempotent_or_stale_never_a_second_erasure() -> None:
    w = erasure_window(epoch_seconds=E, retention_seconds=R)
    assert (w.max_age, w.skew, w.record_ttl) == (R + E, 300.0, R + 2 * E)
    t = [T]
    store = MemoryShredStore(lambda: t[0])
    store.erasure_floor(T - 10 * E)
    shredder = Shredder(store, MemorySink(), worker="w", epoch_seconds=E, retention_seconds=R,
                        clock=lambda: t[0])
    at = T + w.skew  # dated as far in the future as accepted: processed at the earliest instant
    raw = signed("r-edge", at)
    assert code(lambda: accept(raw, at - w.skew - 1, store=store)) == "stale_request"
    req = accept(raw, T, store=store)
    assert not shredder.erase("tk1_A", req.request_id, digest=req.digest).repeated
    last = at + w.max_age  # the last instant the request is accepted: its record still lives
    t[0] = last
    req = accept(raw, last, store=store)
    assert shredder.erase("tk1_A", req.request_id, digest=req.digest).repeated
    assert last < T + w.record_ttl
    t[0] = last + 1
    assert code(lambda: accept(raw, last + 1, store=store)) == "stale_request"


def test_configurations_where_the_window_cannot_hold_are_refused() -> None:
    for epoch, skew in ((300, 300.0), (60, 300.0), (3600, 3600.0)):
        with pytest.raises(ValueError, match="replay window cannot hold"):
            erasure_window(epoch_seconds=epoch, retention_seconds=R, skew_seconds=skew)
    assert erasure_window(epoch_seconds=301, retention_seconds=R).skew == 300.0
    assert erasure_window(epoch_seconds=60, retention_seconds=R, skew_seconds=30).record_ttl == R + 120


@pytest.mark.integration
def test_after_redis_lost_the_record_a_replay_is_refused(redis_client, redis_prefix) -> None:
    t = [T]
    store = RedisShredStore(redis_client, redis_prefix)
    shredder = Shredder(store, MemorySink(), worker="w", epoch_seconds=E, retention_seconds=R,
                        clock=lambda: t[0])
    assert store.erasure_floor(T - 60) == T - 60  # the shredder started a minute ago
    raw = signed("r-lost", T)
    req = accept(raw, T, store=store)
    assert not shredder.erase("tk1_A", req.request_id, digest=req.digest).repeated
    t[0] = T + 2 * E  # well within the window: only the record stops a replay
    req = accept(raw, t[0], store=store)
    assert shredder.erase("tk1_A", req.request_id, digest=req.digest).repeated
    assert delete_prefixed_keys(redis_client, redis_prefix) > 0  # Redis loses its data: the record is gone
    assert redis_client.get(store.erasure_key("r-lost")) is None
    assert code(lambda: accept(raw, t[0], store=store)) == "predates_store"
    # a request signed after the loss runs
    assert accept(signed("r-new", t[0]), t[0], store=store).request_id == "r-new"
