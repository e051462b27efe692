"""The person-level ledger on a real Redis: one cap across attributes and the label, and erasure -
through the shredder's own erase path - never refunds it (issue 12: 20 erasures gave 100 epsilon)."""

from __future__ import annotations

import time

import orjson
import pytest

from stream.crypto.keyring import Keyring
from stream.ldp.labels import ExampleStub
from stream.ldp.ledger import LEDGER_PURPOSE, MICRO, Charge, ledger_id
from stream.ldp.privatizer import ProtectedRecord
from stream.redisdb import SLOTS, RedisClient, key_slot
from stream.storage.ldp import LedgerExhauster, RedisLedgerStore, ledger_key, ledger_slot
from stream.storage.retention import RedisShredStore
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
    store = RedisLedgerStore(redis_client, prefix=redis_prefix)
    shredder = RedisShredStore(redis_client, prefix=redis_prefix)
    priv = make_privatizer(store=store, budget=CAP, label_epsilon=1.0, seed=1)
    spent = 0.0
    for round_ in range(20):
        res = priv.process(records)
        assert len(res.reports) == (2 if round_ == 0 else 0)  # 2 x (2.5 + 0.5 for the label): then it cannot pay
        lab = priv.label_examples([(ExampleStub("s", token, epoch, False, b'"features":{}', now_ms), bool(round_ % 2))])
        spent += sum(res.epsilon_spent.values()) + lab.epsilon_spent
        _rec, created = shredder.erase_subject(token, [epoch], request_id=f"erase-{round_}", at=time.time(),
                                               worker="t", lease_until=time.time() + 60, record_ttl=3600)
        assert created
        priv.cache.invalidate(token)  # as the shredder's notification does
    # round 1 spends 2 x 3 (two feature reports, their labels prepaid); erasures refund nothing
    assert spent == pytest.approx(6.0)
    ledgers = [k for k in redis_client.scan_iter(f"{redis_prefix}:ledger:*")]
    assert len(ledgers) == 1
    (key,) = ledgers
    assert token.encode() not in key and int(redis_client.get(key) or 0) == 6 * MICRO  # a number, no identifier
    assert redis_client.ttl(key) > 29 * 86400  # kept until the epoch's retention ends


@pytest.mark.parametrize("name", ["STREAMGATE_LDP_SEED", "streamgate_ldp_seed", "StreamGate_Ldp_Seed"])
def test_a_seed_is_no_setting_and_the_environment_cannot_give_one(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                   settings_factory) -> None:  # type: ignore[no-untyped-def]
    from stream.apps.privatizer import build_privatizer
    from stream.config import Settings
    from stream.errors import ConfigError
    from stream.ldp.csprng import ChaChaRandom

    settings = settings_factory()
    with pytest.raises(ConfigError, match="ldp_seed is no longer a setting"):
        settings_factory(ldp_seed=3)
    with pytest.raises(ConfigError, match="ldp_seed is no longer a setting"):
        settings.model_copy(update={"ldp_seed": 3})
    monkeypatch.setenv(name, "7")
    with pytest.raises(ConfigError, match=f"{name} is no longer a setting"):  # every worker builds Settings first
        Settings()
    monkeypatch.delenv(name)
    seeded = build_privatizer(settings, seed=3).rng  # the test and benchmark entry point
    assert isinstance(seeded, ChaChaRandom) and seeded.seeded
    priv = build_privatizer(settings)
    assert isinstance(priv.rng, ChaChaRandom) and not priv.rng.seeded


def test_build_privatizer_refuses_a_cap_below_one_report(settings_factory) -> None:  # type: ignore[no-untyped-def]
    from stream.apps.privatizer import build_privatizer
    from stream.errors import ConfigError

    with pytest.raises(ConfigError, match="feature report"):
        build_privatizer(settings_factory(ldp_person_epsilon=2.0, learn_examples=False))  # a report costs 5 x 0.5
    build_privatizer(settings_factory(ldp_person_epsilon=2.5, learn_examples=False))
    # joint-nb examples (the default): the person-epoch's example (1.0) is paid first
    with pytest.raises(ConfigError, match="joint-nb"):
        build_privatizer(settings_factory(ldp_person_epsilon=3.4))
    assert build_privatizer(settings_factory(ldp_person_epsilon=3.5)).per_person == 1


def test_a_person_returning_after_erasures_stays_within_the_cap(settings_factory, redis_client: RedisClient) -> None:  # type: ignore[no-untyped-def]
    """End to end with the default settings: the gateway's tk2 tokens, the shredder's erasure by
    user_id (it leaves the erased marker), the person's new events under a new token (the gateway
    exhausts its ledgers), the privatizer's ledger. Before the marker: 4 rounds spent 20 against 8."""
    from stream.apps.shredder import ShredderEngine
    from stream.components import build_gateway
    from stream.gateway.core import RawRecord
    from stream.retention.core import MemorySink
    from stream.retention.receipts import rfc3339
    from tests.support.shred import signed_request

    settings = settings_factory(ldp_person_epsilon=CAP)
    assert settings.pseudonym_tokens
    gw = build_gateway(settings)
    ledger_key = Keyring.from_settings(settings).derive(LEDGER_PURPOSE)
    priv = make_privatizer(store=RedisLedgerStore(redis_client, prefix=settings.redis_key_prefix), budget=CAP, seed=1,
                           ledger_key=ledger_key)
    engine = ShredderEngine(settings)
    engine.shredder.sink = MemorySink()
    user_id = _event(0)["user_id"]
    pseud = gw.tokenizer.pseudonyms
    assert pseud is not None
    mark = pseud.perased_key(pseud.lookup_id(user_id))
    now_ms = int(time.time() * 1000)
    spent, standins, tokens = 0.0, 0, set()
    for round_ in range(4):
        out = gw.process([RawRecord("t", 0, i, orjson.dumps(_event(10 * round_ + i)), None) for i in range(3)])
        (token,) = {k.decode() for k, _v in out.protected}
        tokens.add(token)
        res = priv.process([ProtectedRecord(v, now_ms) for _k, v in out.protected])
        assert len(res.reports) == (3 if round_ == 0 else 0)
        spent += sum(res.epsilon_spent.values())
        standins += res.over_budget
        assert redis_client.exists(mark) == (round_ > 0)  # written by the erasure, not by the gateway
        before = int(time.time()) // settings.epoch_seconds
        engine._erase_one(signed_request(settings, f"refund-{round_}", user_id=user_id,
                                         requested_at=rfc3339(time.time())), f"t/0/{round_}")
        assert before <= int(redis_client.get(mark) or -1) <= int(time.time()) // settings.epoch_seconds
        gw.tokenizer.forget(token)  # as the shred channel does
        priv.cache.invalidate(token)
    assert engine.shredder.stats.erasures == 4 and len(tokens) == 4  # a new tk2 token after each erasure
    assert pseud.returned == 3
    # round 1 spends 3 x 2.5; every later token starts at the cap: nothing released
    assert spent == pytest.approx(7.5) and spent <= CAP
    assert standins == 3 * 3


E, R = 3600, 7200
T0 = 1_900_000_000.0  # = the default requested_at of signed_request; mid-epoch


def _raw(user_id: str, i: int = 0):  # type: ignore[no-untyped-def]
    from stream.gateway.core import RawRecord

    return RawRecord("clicks.raw", 0, i, orjson.dumps(dict(_event(i), user_id=user_id)), None)


class _Person:
    """One person through the real gateway, privatizer and shredder, on an injected clock (E, R epochs)."""

    def __init__(self, settings, redis_client: RedisClient, user_id: str) -> None:  # type: ignore[no-untyped-def]
        from stream.apps.privatizer import build_privatizer
        from stream.apps.shredder import ShredderEngine
        from stream.components import build_gateway
        from stream.retention.core import MemorySink
        from tests.support.clock import Clock

        self.settings, self.redis, self.user_id = settings, redis_client, user_id
        self.clock = Clock(T0)
        self.gw = build_gateway(settings, clock=self.clock)
        self.priv = build_privatizer(settings, client=redis_client, clock=self.clock)
        self.engine = ShredderEngine(settings, client=redis_client, clock=self.clock)
        self.engine.shredder.sink = MemorySink()
        self.key = Keyring.from_settings(settings).derive(LEDGER_PURPOSE)
        pseud = self.gw.tokenizer.pseudonyms
        assert pseud is not None
        self.pseud = pseud
        self.mark = pseud.perased_key(pseud.lookup_id(user_id))

    def events(self, n: int = 2) -> tuple[str, list[ProtectedRecord]]:
        """The person's token and ``n`` protected records stamped by the gateway's clock."""
        out = self.gw.process([_raw(self.user_id, i) for i in range(n)])
        (token,) = {k.decode() for k, _v in out.protected}
        return token, [ProtectedRecord(v, int(self.clock() * 1000)) for _k, v in out.protected]

    def erase(self, request_id: str) -> None:
        from tests.support.shred import signed_request

        self.engine._erase_one(signed_request(self.settings, request_id, user_id=self.user_id), "t/0/0")

    def ledger(self, token: str, epoch: int) -> str:
        return ledger_key(self.settings.redis_key_prefix, token, ledger_id(self.key, token, epoch))


@pytest.fixture
def person(settings_factory, redis_client: RedisClient) -> _Person:  # type: ignore[no-untyped-def]
    settings = settings_factory(epoch_seconds=E, retention_seconds=R, ldp_person_epsilon=CAP,
                                dek_cache_max_staleness_seconds=30.0)
    return _Person(settings, redis_client, "usr_returning")


def test_the_erased_marker_holds_an_epoch_only_and_expires_with_that_epochs_ledgers(person: _Person) -> None:
    r, epoch = person.redis, int(T0) // E
    token, records = person.events()
    assert sum(person.priv.process(records).epsilon_spent.values()) > 0
    person.erase("mark-1")
    marks = list(r.scan_iter(f"{person.settings.redis_key_prefix}:perased:*"))
    assert marks == [person.mark.encode()]  # its name: the keyed lookup id
    value = r.get(person.mark)
    assert value == str(epoch).encode()  # its value: the erasure's epoch, nothing else
    for secret in (person.user_id, token, token[4:]):
        assert secret.encode() not in person.mark.encode() + value
    # it expires with the last ledger that could still be charged for that epoch (or earlier)
    assert r.expiretime(person.mark) == r.expiretime(person.ledger(token, epoch)) == (epoch + 1) * E + R
    # an erasure of someone without a pseudonym secret (never seen, or erased already) writes none
    person.erase("mark-2")
    other = _Person(person.settings, r, "usr_never_seen")
    other.erase("mark-3")
    assert list(r.scan_iter(f"{person.settings.redis_key_prefix}:perased:*")) == marks


def test_a_person_erased_in_epoch_e_reports_normally_again_in_epoch_e_plus_1(person: _Person) -> None:
    r, epoch = person.redis, int(T0) // E
    old, records = person.events()
    assert person.priv.process(records).epsilon_spent
    person.erase("next-1")
    person.gw.tokenizer.forget(old)
    # back in the same epoch: a new token whose ledgers are at the cap, so nothing is released
    new, records = person.events()
    assert new != old and int(r.get(person.ledger(new, epoch)) or 0) == CAP * MICRO
    res = person.priv.process(records)
    assert not res.epsilon_spent and res.over_budget == 2
    # the next epoch: the same token, a fresh ledger, genuine reports
    person.clock.advance(E)
    again, records = person.events()
    assert again == new and r.get(person.ledger(new, epoch + 1)) is None
    res = person.priv.process(records)
    assert sum(res.epsilon_spent.values()) > 0 and not res.over_budget
    # ... while a late event of the erasure's epoch still finds its ledger exhausted
    late = person.priv.process([ProtectedRecord(records[0].value, int(T0 * 1000))])
    assert not late.epsilon_spent and late.over_budget == 1


def test_the_marker_is_honoured_again_when_the_first_charge_did_not_happen(person: _Person) -> None:
    """Crash safety: exhausting is repeated on every mint while the marker lives, and tokens are
    returned only after it."""
    from stream.errors import KeyUnavailableError

    r, epoch = person.redis, int(T0) // E
    old, _records = person.events()
    person.erase("crash-1")
    person.gw.tokenizer.forget(old)
    # the exhaust fails (Redis gone in between): the batch fails, nothing is emitted
    exhaust = person.pseud.on_erased
    assert exhaust is not None

    def down(erased: dict[str, int], now: float) -> object:
        raise KeyUnavailableError("ledger store unavailable")

    person.pseud.on_erased = down
    with pytest.raises(KeyUnavailableError):
        person.events()
    person.pseud.on_erased = exhaust
    new, _records = person.events()  # the secret exists now; the marker is reported again
    ledgers = [person.ledger(new, e) for e in (epoch - 1, epoch)]  # still chargeable at T0
    assert [int(r.get(k) or 0) for k in ledgers] == [CAP * MICRO] * 2
    # the charge is lost after all (say, a Redis failover): the next round trip exhausts again
    r.delete(*ledgers)
    assert person.events()[0] == new and r.get(ledgers[1]) is None  # within the token cache's staleness bound
    person.clock.advance(person.settings.dek_cache_max_staleness_seconds + 1)
    assert person.events()[0] == new
    assert [int(r.get(k) or 0) for k in ledgers] == [CAP * MICRO] * 2
    assert [r.expiretime(k) for k in ledgers] == [e * E + E + R for e in (epoch - 1, epoch)]
    assert not person.priv.process(person.events()[1]).epsilon_spent


def test_the_marker_shares_the_secrets_slot_and_is_never_lowered(person: _Person) -> None:
    """The marker is tagged with the lookup id: one slot with ``pid`` (on a cluster the erasure writes it
    in the script that deletes ``pid``, and the mint reads it with ``pid``). A later erasure raises it;
    one by a shredder whose clock is an epoch behind leaves it."""
    from stream.apps.shredder import ShredderEngine
    from stream.retention.core import MemorySink
    from tests.support.clock import Clock
    from tests.support.shred import signed_request

    r, epoch, pseud = person.redis, int(T0) // E, person.pseud
    pid = pseud.pid_key(pseud.lookup_id(person.user_id))
    assert key_slot(person.mark.encode()) == key_slot(pid.encode())
    first, _records = person.events()
    person.erase("low-1")
    assert r.get(pid) is None and r.get(person.mark) == str(epoch).encode()
    person.gw.tokenizer.forget(first)
    person.clock.advance(E)
    second, _records = person.events()
    person.erase("low-2")
    assert r.get(person.mark) == str(epoch + 1).encode()
    assert r.expiretime(person.mark) == (epoch + 2) * E + R
    person.gw.tokenizer.forget(second)
    third, _records = person.events()
    assert len({first, second, third}) == 3 and r.get(pid) is not None
    behind = ShredderEngine(person.settings, client=r, clock=Clock(T0))
    behind.shredder.sink = MemorySink()
    behind._erase_one(signed_request(person.settings, "low-3", user_id=person.user_id), "t/0/1")
    assert behind.shredder.stats.erasures == 1 and r.get(pid) is None
    assert r.get(person.mark) == str(epoch + 1).encode() and r.expiretime(person.mark) == (epoch + 2) * E + R


def _tokens_on_every_master(n_masters: int = 3) -> list[str]:
    """Made-up person tokens whose slots fall in each third of the slot space (a three-master
    cluster's masters), two per third."""
    per: dict[int, list[str]] = {}
    i = 0
    while any(len(per.get(m, [])) < 2 for m in range(n_masters)):
        tok = f"tk2_spread{i:018d}"
        per.setdefault(ledger_slot(tok) * n_masters // SLOTS, []).append(tok)
        i += 1
    return [t for m in range(n_masters) for t in per[m][:2]]


def test_the_exhauster_raises_ledgers_in_every_persons_slot_as_the_charge_script_reads_them(
        redis_client: RedisClient, redis_prefix: str) -> None:
    """LedgerExhauster and the privatizer's charge script name a ledger by the same function: ledgers
    raised for people spread over every master are read as full by the charge script; a ledger below
    the cap is raised, one above it is not lowered."""
    key = Keyring.generate().derive(LEDGER_PURPOSE)
    tokens = _tokens_on_every_master()
    epoch, cap = int(T0) // E, round(CAP * MICRO)
    low, high = tokens[0], tokens[1]
    redis_client.set(ledger_key(redis_prefix, low, ledger_id(key, low, epoch)), MICRO, exat=(epoch + 1) * E + R)
    redis_client.set(ledger_key(redis_prefix, high, ledger_id(key, high, epoch)), 2 * cap, exat=(epoch + 1) * E + R)
    ex = LedgerExhauster(redis_client, redis_prefix, key, budget_epsilon=CAP, epoch_seconds=E, retention_seconds=R)
    # epochs e-2, e-1 and e are still chargeable at T0 (their deadlines, (e + 1) * E + R, are ahead)
    assert ex.exhaust(dict.fromkeys(tokens, epoch), T0) == 3 * len(tokens)
    assert redis_client.get(ledger_key(redis_prefix, low, ledger_id(key, low, epoch - 3))) is None
    for tok in tokens:
        for e in (epoch - 2, epoch - 1, epoch):
            name = ledger_key(redis_prefix, tok, ledger_id(key, tok, e))
            assert key_slot(name.encode()) == ledger_slot(tok)
            assert int(redis_client.get(name) or 0) == (2 * cap if (tok, e) == (high, epoch) else cap)
            assert redis_client.expiretime(name) == (e + 1) * E + R
    store = RedisLedgerStore(redis_client, prefix=redis_prefix)
    charges = [Charge(tok, ledger_id(key, tok, epoch), 1, (epoch + 1) * E + R) for tok in tokens]
    assert store.charge(charges, cap) == [False] * len(tokens)
    other = Charge(tokens[0], ledger_id(key, tokens[0], epoch + 1), 1, (epoch + 2) * E + R)
    assert store.charge([other], cap) == [True]  # the next epoch is untouched


def test_people_returning_together_each_find_their_ledgers_at_the_cap(settings_factory,  # type: ignore[no-untyped-def]
                                                                      redis_client: RedisClient) -> None:
    """One gateway batch with several people returning after their erasures: the mint reports every
    marker (on a cluster: one script per lookup id's slot) and each new token's ledger is at the cap
    in that token's slot before the batch is emitted; the privatizer then releases nothing."""
    settings = settings_factory(epoch_seconds=E, retention_seconds=R, ldp_person_epsilon=CAP,
                                dek_cache_max_staleness_seconds=30.0)
    users = [f"usr_together_{i}" for i in range(6)]
    person = _Person(settings, redis_client, users[0])
    gw, epoch = person.gw, int(T0) // E
    first = gw.process([_raw(u, i) for i, u in enumerate(users)])
    old = {k.decode() for k, _v in first.protected}
    for i, u in enumerate(users):
        person.engine._erase_one(signed_request_for(settings, f"together-{i}", u), f"t/0/{i}")
    for tok in old:
        gw.tokenizer.forget(tok)
    again = gw.process([_raw(u, i) for i, u in enumerate(users)])
    new = {k.decode() for k, _v in again.protected}
    assert len(new) == len(users) and not new & old
    assert person.pseud.returned == len(users)
    for tok in new:
        assert int(redis_client.get(person.ledger(tok, epoch)) or 0) == CAP * MICRO
    res = person.priv.process([ProtectedRecord(v, int(T0 * 1000)) for _k, v in again.protected])
    assert not res.epsilon_spent and res.over_budget == len(users)


def signed_request_for(settings, request_id: str, user_id: str) -> bytes:  # type: ignore[no-untyped-def]
    from tests.support.shred import signed_request

    return signed_request(settings, request_id, user_id=user_id)
