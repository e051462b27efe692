"""The person-level ledger on a real Redis: one cap across attributes and the label, and erasure -
through the shredder's own erase path - never refunds it (issue 12: 20 erasures gave 100 epsilon)."""

from __future__ import annotations

import time

import orjson
import pytest

from stream.crypto.keyring import Keyring
from stream.ldp.labels import ExampleStub
from stream.ldp.memo import MICRO, RedisMemoStore
from stream.ldp.privatizer import ProtectedRecord
from stream.redisdb import RedisClient
from stream.retention.redis_store import RedisShredStore
from tests.support.ldp import make_privatizer, protect

pytestmark = pytest.mark.integration

CAP = 8.0


def _event(i: int) -> dict:
    return {
        "event_id": f"00000000-0000-4000-8000-{i:012d}", "event_type": "product_view", "ts": "2024-01-03T10:15:00Z",
        "user_id": "erin@example.com-id-7", "session_id": "sess-9", "page": "/p/1", "email": "erin@example.com",
        "category": "books", "device": "mobile", "country": "DE", "price": 19.5,
    }


def test_repeated_erasures_within_an_epoch_spend_no_more_than_the_cap(redis_client: RedisClient,
                                                                       redis_prefix: str) -> None:
    keyring = Keyring.generate()
    now_ms = int(time.time() * 1000)
    records = [ProtectedRecord(v, now_ms) for _k, v in protect([_event(i) for i in range(3)], keyring)]
    token = orjson.loads(records[0].value or b"")["user_id"]
    epoch = now_ms // 1000 // 86400
    store = RedisMemoStore(redis_client, prefix=redis_prefix)
    shredder = RedisShredStore(redis_client, prefix=redis_prefix)
    priv = make_privatizer(store=store, budget=CAP, label_epsilon=1.0, seed=1)
    spent = 0.0
    for round_ in range(20):
        res = priv.process(records)
        assert len(res.reports) == 3  # always reported (stand-ins once the ledger is at the cap)
        lab = priv.label_examples([(ExampleStub("s", token, epoch, False, b'"features":{}', now_ms), bool(round_ % 2))])
        spent += sum(res.epsilon_spent.values()) + lab.epsilon_spent
        assert bool(redis_client.exists(store.memo_key(token, epoch))) == (round_ < 2)
        _rec, created = shredder.erase_subject(token, [epoch], request_id=f"erase-{round_}", at=time.time(),
                                               worker="t", lease_until=time.time() + 60, record_ttl=3600)
        assert created and not redis_client.exists(store.memo_key(token, epoch))  # the memos are gone
        priv.cache.invalidate(token)  # as the shredder's notification does
    # round 1 spends 5 (one memo per attribute) + 1 (label) = 6; after its erasure two new memos
    # fit (8 = the cap); then nothing: every later report is a stand-in
    assert spent == pytest.approx(CAP)
    ledgers = [k for k in redis_client.scan_iter(f"{redis_prefix}:ledger:*")]
    assert len(ledgers) == 1
    (key,) = ledgers
    assert token.encode() not in key and int(redis_client.get(key) or 0) == 8 * MICRO  # a number, no identifier
    assert redis_client.ttl(key) > 29 * 86400  # kept until the epoch's retention ends


def test_build_privatizer_refuses_a_seed_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                              settings_factory) -> None:  # type: ignore[no-untyped-def]
    from stream.apps.privatizer import build_privatizer
    from stream.errors import ConfigError
    from stream.ldp.csprng import ChaChaRandom

    settings = settings_factory(ldp_seed=3)
    monkeypatch.setenv("STREAMGATE_LDP_SEED", "3")
    with pytest.raises(ConfigError, match="STREAMGATE_LDP_SEED"):
        build_privatizer(settings)
    assert isinstance(build_privatizer(settings, allow_seed=True).rng, ChaChaRandom)  # bench entry point
    monkeypatch.delenv("STREAMGATE_LDP_SEED")
    priv = build_privatizer(settings_factory())
    assert isinstance(priv.rng, ChaChaRandom) and not priv.rng.seeded


def test_build_privatizer_refuses_a_cap_below_one_memo(settings_factory) -> None:  # type: ignore[no-untyped-def]
    from stream.apps.privatizer import build_privatizer
    from stream.errors import ConfigError

    with pytest.raises(ConfigError, match="session_purchase"):
        build_privatizer(settings_factory(ldp_person_epsilon=12.0, learn_label_epsilon=20.0))
    build_privatizer(settings_factory(ldp_person_epsilon=20.0, learn_label_epsilon=20.0))
