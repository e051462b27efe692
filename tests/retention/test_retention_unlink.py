"""Erasure reaches beyond the DEKs (issue 13): dead letters sealed under the person's key,
token memos dropped on the shred channel, pseudonyms that unlink on erasure. Real Redis."""

from __future__ import annotations

import time

import orjson
import pytest

from stream.apps.shredder import ShredderEngine
from stream.components import (
    build_dek_provider,
    build_gateway,
    build_pseudonyms,
    invalidation_listener,
    redis_client,
)
from stream.config import Settings
from stream.errors import KeyShreddedError
from stream.gateway.core import QUARANTINE_SUBJECT, RawRecord, unseal_dead_letter
from stream.retention.core import MemorySink, Shredder
from stream.schema import output_validator
from stream.storage.retention import RedisShredStore
from stream.synth import ClickstreamGenerator
from tests.support.fixtures import admin_client
from tests.support.shred import Clock, key_name, redis_keys_of, signed_request
from tests.support.shred import reader as shred_reader

pytestmark = pytest.mark.integration

E, R = 3600, 7200
T0 = 1_900_000_000.0


@pytest.fixture
def settings(settings_factory):
    return settings_factory(epoch_seconds=E, retention_seconds=R, dek_cache_max_staleness_seconds=30)


def shredder(settings, clock) -> Shredder:
    store = RedisShredStore(redis_client(settings, "shredder"), settings.redis_key_prefix)
    return Shredder(store, MemorySink(), worker="w1", epoch_seconds=E, retention_seconds=R, clock=clock)


def event(user_id: str, **over) -> dict:
    ev = next(iter(ClickstreamGenerator(seed=3).events(1)))
    return dict(ev, user_id=user_id, **over)


def test_dead_letters_of_a_person_die_with_the_person_quarantined_ones_survive(settings) -> None:
    clock = Clock(T0)
    gw = build_gateway(settings, clock=clock)
    person = orjson.dumps(event("usr_dead_letter", email="not an email"))  # schema violation, user_id parses
    nobody = b'{"user_id": 17, "oops": true'  # not JSON: no subject
    ok = orjson.dumps(event("usr_dead_letter"))
    result = gw.process([RawRecord("clicks.raw", 0, i, v, None) for i, v in enumerate([person, nobody, ok])])
    assert len(result.protected) == 1 and len(result.dead_letters) == 2
    dl_person, dl_nobody = (orjson.loads(d) for d in result.dead_letters)
    check = output_validator("dlq-record.v1")
    assert check(dl_person) == [] and check(dl_nobody) == []
    token = result.protected[0][0].decode()
    assert dl_person["sealed_for"] == token and dl_nobody["sealed_for"] == QUARANTINE_SUBJECT
    assert b"usr_dead_letter" not in result.dead_letters[0]
    assert unseal_dead_letter(dl_person, build_dek_provider(settings, clock=clock)) == person
    assert unseal_dead_letter(dl_nobody, build_dek_provider(settings, clock=clock)) == nobody

    shredder(settings, clock).erase(token, "req-dlq-1")

    deks = build_dek_provider(settings, clock=clock)
    with pytest.raises(KeyShreddedError):
        unseal_dead_letter(dl_person, deks)
    assert unseal_dead_letter(dl_nobody, deks) == nobody
    # the binding: claiming the quarantine key for the person's dead letter does not unseal it
    with pytest.raises(Exception) as info:
        unseal_dead_letter({**dl_person, "sealed_for": QUARANTINE_SUBJECT}, deks)
    assert type(info.value).__name__ in {"DecryptError", "KeyShreddedError"}


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_tokenizer_memo_drops_an_erased_person_on_the_shred_channel(settings) -> None:
    """With tk1 person tokens (opted out of tk2) the erased person leaves the tokenizer's memo."""
    s = settings.model_copy(update={"dek_cache_max_staleness_seconds": 3600.0, "pseudonym_tokens": False})
    clock = Clock(T0)
    gw = build_gateway(s, clock=clock, listen=True)
    listener = invalidation_listener(gw.deks)
    assert listener is not None and listener.ready.wait(10)
    try:
        out = gw.process([RawRecord("clicks.raw", 0, i, orjson.dumps(event(u)), None)
                          for i, u in enumerate(["usr_memo_a", "usr_memo_b"])])
        tok_a = out.protected[0][0].decode()
        memo = gw.tokenizer._memo
        assert ("user_id", "usr_memo_a") in memo and ("user_id", "usr_memo_b") in memo
        shredder(s, clock).erase(tok_a, "req-memo")
        assert wait_for(lambda: ("user_id", "usr_memo_a") not in memo)
        assert ("user_id", "usr_memo_b") in memo  # only the erased person's entries
    finally:
        listener.stop()


@pytest.fixture
def tk2(settings):
    """The default settings (only the cache bound raised): person tokens are tk2 out of the box."""
    assert Settings.model_fields["pseudonym_tokens"].default is True and settings.pseudonym_tokens
    return settings.model_copy(update={"dek_cache_max_staleness_seconds": 3600.0})


def all_tokens_of(settings, user_id: str) -> set[str]:
    """Every token anyone holding the full master keyring and a dump of Redis can compute from
    ``user_id``: the tk1 token, the token under every 32 bytes found anywhere in the dump (every key
    of every type on every node, DUMP included; raw, and hex or base64 decoded) taken as a pseudonym
    secret, and the one the gateway would give the user_id now (created if absent)."""
    import base64
    import binascii
    import contextlib

    from stream.crypto.keyring import Keyring
    from stream.crypto.kms import LocalKMS
    from stream.crypto.tokens import Tokenizer
    from stream.errors import KeyUnavailableError
    from tests.support.adversary import dump_redis

    pseud = build_pseudonyms(settings)
    kms = LocalKMS(Keyring.from_settings(settings))
    out = {Tokenizer(Keyring.from_settings(settings)).token(pseud.domain, user_id)}
    blobs: set[bytes] = set()
    for item in dump_redis(admin_client(settings)).items:
        blobs.add(item.data)
        for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(ValueError, UnicodeDecodeError, binascii.Error):
                blobs.add(decode(item.data.decode("ascii")))
    secrets = {b[i:i + 32] for b in blobs for i in range(len(b) - 31)}
    assert secrets, "an empty dump proves nothing"
    out |= {pseud.token_from(s, user_id) for s in secrets}
    # and every wrapped secret, unwrapped with the master keyring's KEK
    rc = admin_client(settings)
    for key in rc.scan_iter(match=f"{settings.redis_key_prefix}:*"):
        raw = rc.get(key) if rc.type(key) == b"string" else None
        if isinstance(raw, bytes) and raw.startswith(b"3.tk2_"):  # b"3." token b"." secret wrapped by the KEK
            try:  # whose key name it is bound to does not matter: try it under its own, for this user_id
                out.add(pseud.keys.open(raw, key.decode(), user_id))
            except KeyUnavailableError:  # someone else's secret: the token it gives for user_id
                tok = pseud.keys.parse(raw)
                secret = kms.unwrap(raw[len(tok) + 3:], pseud.keys._aad(key.decode(), tok))
                out.add(pseud.token_from(secret, user_id))
    return out | {pseud.tokens([user_id], 2**33)[0]}


def test_tk2_tokens_are_stable_while_the_person_exists(tk2) -> None:
    clock = Clock(T0)
    first = build_gateway(tk2, clock=clock).process([RawRecord("clicks.raw", 0, 0, orjson.dumps(event("usr_s")), None)])
    tok = first.protected[0][0].decode()
    assert tok.startswith("tk2_")
    clock.advance(2 * E)  # a later epoch, another process, no cache
    again = build_gateway(tk2, clock=clock).process([RawRecord("clicks.raw", 0, 1, orjson.dumps(event("usr_s")), None)])
    assert again.protected[0][0].decode() == tok
    assert build_pseudonyms(tk2).lookup("usr_s") == tok
    # one secret per person, living exactly as long as their newest key
    rc = admin_client(tk2)
    newest = (int(clock() // E) + 1) * E + R
    assert rc.expiretime(f"{tk2.redis_key_prefix}:ptok:{{{tok}}}") == newest
    assert rc.expiretime(key_name(tk2.redis_key_prefix, "dek", tok, int(clock() // E))) == newest
    assert tok in all_tokens_of(tk2, "usr_s")


def test_after_erasure_nobody_can_link_the_retained_token_to_the_user_id(tk2) -> None:
    clock = Clock(T0)
    gw = build_gateway(tk2, clock=clock, listen=True)
    listener = invalidation_listener(gw.deks)
    assert listener is not None and listener.ready.wait(10)
    try:
        before = gw.process([RawRecord("clicks.raw", 0, i, orjson.dumps(event(u)), None)
                             for i, u in enumerate(["usr_gone", "usr_stays"])])
        retained = {k.decode() for k, _ in before.protected}
        old = before.protected[0][0].decode()
        stays = before.protected[1][0].decode()
        assert old in all_tokens_of(tk2, "usr_gone")

        engine = ShredderEngine(tk2, clock=clock)
        engine.shredder.sink = MemorySink()
        engine._erase_one(signed_request(tk2, "req-unlink", user_id="usr_gone"), "t/0/0")
        assert engine.shredder.stats.erasures == 1

        assert old in retained and old not in all_tokens_of(tk2, "usr_gone")
        prefix = tk2.redis_key_prefix
        rc = admin_client(tk2)
        assert not list(rc.scan_iter(match=f"{prefix}:ptok:{{{old}}}"))
        assert not list(rc.scan_iter(match=key_name(prefix, "dek", old, "*")))
        assert build_pseudonyms(tk2).lookup("usr_stays") == stays
        # the running gateway forgot the person at once: a re-appearing user_id gets a new token
        assert wait_for(lambda: ("usr_gone" not in gw.tokenizer.pseudonyms._memo))
        after = gw.process([RawRecord("clicks.raw", 0, 9, orjson.dumps(event("usr_gone")), None)])
        new = after.protected[0][0].decode()
        assert new != old and new.startswith("tk2_")
        # a redelivered request is the same request (not a conflict), and erases nothing new
        engine._erase_one(signed_request(tk2, "req-unlink", user_id="usr_gone"), "t/0/1")
        assert engine.shredder.stats.erasures_rejected == 0
        assert build_pseudonyms(tk2).lookup("usr_gone") == new
    finally:
        listener.stop()


def test_redis_losing_the_secrets_is_noticed_by_the_guard_and_tokens_change(tk2) -> None:
    """Documented trade-off: a Redis data loss changes every tk2 token; the key-store guard drops the
    cached secrets at once instead of issuing tokens whose secret no longer exists."""
    clock = Clock(T0)
    gw = build_gateway(tk2, clock=clock)
    rec = RawRecord("clicks.raw", 0, 0, orjson.dumps(event("usr_loss")), None)
    tok = gw.process([rec]).protected[0][0].decode()
    assert gw.process([rec]).protected[0][0].decode() == tok  # cached
    rc = admin_client(tk2)
    from tests.support.fixtures import delete_prefixed_keys

    delete_prefixed_keys(rc, tk2.redis_key_prefix)  # the data loss (marker included)
    new = gw.process([rec]).protected[0][0].decode()
    assert new != tok and gw.deks.guard.resets == 1
    assert build_pseudonyms(tk2).lookup("usr_loss") == new


def test_tk2_events_follow_the_output_schema_and_erasure_also_reaches_tk1_era_data(settings, tk2) -> None:
    """Upgrading to tk2 (the default) from tk1: data written under the tk1 token before is still
    within retention; an erasure by user_id destroys the keys of both tokens."""
    clock = Clock(T0)
    before = settings.model_copy(update={"pseudonym_tokens": False})
    old = build_gateway(before, clock=clock).process([RawRecord("clicks.raw", 0, 0, orjson.dumps(event("usr_era")), None)])
    new = build_gateway(tk2, clock=clock).process([RawRecord("clicks.raw", 0, 1, orjson.dumps(event("usr_era")), None)])
    tk1, tok2 = old.protected[0][0].decode(), new.protected[0][0].decode()
    assert tk1.startswith("tk1_") and tok2.startswith("tk2_")
    assert output_validator("protected-event.v1")(orjson.loads(new.protected[0][1])) == []
    engine = ShredderEngine(tk2, clock=clock)
    engine.shredder.sink = MemorySink()
    engine._erase_one(signed_request(tk2, "req-era", user_id="usr_era"), "t/0/0")
    rc = admin_client(tk2)
    prefix = tk2.redis_key_prefix
    assert not list(rc.scan_iter(match=key_name(prefix, "dek", tk1, "*")))
    assert not list(rc.scan_iter(match=key_name(prefix, "dek", tok2, "*")))
    assert {r["subject"] for r in engine.shredder.sink.receipts} == {tk1, tok2}


def test_erasure_by_tk2_token_destroys_the_secret_too(tk2) -> None:
    from tests.support.shred import token_of

    tok = token_of(tk2, "usr_by_token")
    other = token_of(tk2, "usr_kept")
    pseud = build_pseudonyms(tk2)
    assert pseud.lookup("usr_by_token") == tok
    shredder(tk2, Clock(T0)).erase(tok, "req-by-token")
    assert pseud.lookup("usr_by_token") is None and pseud.lookup("usr_kept") == other
    assert admin_client(tk2).get(f"{tk2.redis_key_prefix}:ptok:{{{tok}}}") is None
    assert len(list(admin_client(tk2).scan_iter(match=f"{tk2.redis_key_prefix}:pid:*"))) == 1  # usr_kept's secret


def test_looking_a_person_up_creates_no_secret(tk2) -> None:
    """decrypt --user, audit --user, erase and the shredder find a user_id's token without creating
    one: a person never seen, or already erased, stays without a secret (and without a token)."""
    from stream.components import person_tokens

    clock = Clock(T0)
    rc = admin_client(tk2)

    def secrets() -> int:
        return len(list(rc.scan_iter(match=f"{tk2.redis_key_prefix}:pid:*")))

    tok = build_gateway(tk2, clock=clock).process(
        [RawRecord("clicks.raw", 0, 0, orjson.dumps(event("usr_seen")), None)]).protected[0][0].decode()
    assert secrets() == 1
    assert person_tokens(tk2, "usr_seen", legacy=False) == [tok]
    assert person_tokens(tk2, "usr_never", legacy=False) == []
    assert [t[:4] for t in person_tokens(tk2, "usr_never")] == ["tk1_"]  # records from before tk2 only
    engine = ShredderEngine(tk2, clock=clock)
    engine.shredder.sink = MemorySink()
    for i, user in enumerate(["usr_never", "usr_seen", "usr_seen"]):  # the last: someone already erased
        engine._erase_one(signed_request(tk2, f"req-lookup-{i}", user_id=user), f"t/0/{i}")
    assert engine.shredder.stats.erasures == 3 and secrets() == 0
    assert person_tokens(tk2, "usr_seen", legacy=False) == [] and secrets() == 0


def test_a_gateway_that_missed_the_shred_message_keeps_the_old_token_for_at_most_the_cache_bound(settings) -> None:
    """No listener (the shred message is missed): the erased person's old tk2 token and data key are used
    for less than STREAMGATE_DEK_CACHE_MAX_STALENESS_SECONDS after they were last checked, never at or
    past it; what is encrypted meanwhile is under the destroyed key (lost, never readable)."""
    bound = settings.dek_cache_max_staleness_seconds
    assert bound == 30
    clock = Clock(T0)
    gw = build_gateway(settings, clock=clock)  # no invalidation listener

    def token_now(i: int) -> tuple[str, dict]:
        out = gw.process([RawRecord("clicks.raw", 0, i, orjson.dumps(event("usr_missed")), None)])
        return out.protected[0][0].decode(), orjson.loads(out.protected[0][1])

    old, _ = token_now(0)  # checked against Redis at T0
    clock.advance(5)
    shredder(settings, clock).erase(old, "req-missed")
    clock.t = T0 + bound - 0.001  # the last instant inside the bound
    stale, ev = token_now(1)
    assert stale == old  # the missed message: still the old token ...
    reader = shred_reader(settings, clock, on_shredded="raise")
    with pytest.raises(KeyShreddedError):
        reader.decrypt(ev)  # ... and the old, destroyed key: the event is lost, not readable
    clock.t = T0 + bound  # at the bound: re-checked against Redis
    fresh, ev = token_now(2)
    assert fresh != old and fresh.startswith("tk2_")
    assert reader.decrypt(ev)["user_id"] == fresh


def test_a_batch_tokenized_before_an_erasure_is_protected_under_the_next_token(settings) -> None:
    """A gateway's batch tokenized before the erasure asks for its key after it (its token memo kept the old
    token, its key cache did not): no key is created for the erased token (the erasure's marker); the batch
    is held (a KeyUnavailableError), the old token forgotten, and the retry protects it under the person's
    next token. Nothing is ever readable under the erased token."""
    from stream.errors import KeyUnavailableError, SubjectErasedError

    clock = Clock(T0)
    gw = build_gateway(settings, clock=clock)  # no invalidation listener
    rec = RawRecord("clicks.raw", 0, 0, orjson.dumps(event("usr_inflight")), None)
    old = gw.process([rec]).protected[0][0].decode()
    shredder(settings, clock).erase(old, "req-inflight")
    gw.deks.invalidate(old)  # its key cache entry went stale; the token memo did not
    with pytest.raises(SubjectErasedError) as refused:
        gw.process([rec])
    assert isinstance(refused.value, KeyUnavailableError) and refused.value.subjects == [old]
    assert old not in str(refused.value)  # the message names no token
    assert redis_keys_of(admin_client(settings), settings.redis_key_prefix, old) == []
    key, value = gw.process([rec]).protected[0]  # the engine's retry of the held batch
    new = key.decode()
    assert new != old and new.startswith("tk2_")
    assert shred_reader(settings, clock).decrypt(orjson.loads(value))["user_id"] == new
    assert redis_keys_of(admin_client(settings), settings.redis_key_prefix, old) == []


def test_a_key_created_while_the_erasure_reads_the_keys_is_refused(settings, monkeypatch) -> None:
    """The race: a gateway creates the person's key of a new epoch after the erasure read which keys exist
    and before it destroyed them. Without the marker that key outlived the erasure (unindexed, readable);
    with it the creation is refused and nothing of the person is left."""
    from stream.errors import SubjectErasedError

    clock = Clock(T0)
    gw = build_gateway(settings, clock=clock)
    rec = RawRecord("clicks.raw", 0, 0, orjson.dumps(event("usr_race")), None)
    token = gw.process([rec]).protected[0][0].decode()
    epoch = int(T0 // E)
    raced: list[BaseException] = []
    real_read = RedisShredStore._read

    def read_then_race(self, members):
        found = real_read(self, members)
        try:  # the gateway's next epoch, created now
            gw.deks.keys_for([token], epoch + 1)
        except SubjectErasedError as exc:
            raised.append(exc)
        else:
            raced.append(AssertionError("created"))
        return found

    raised: list[BaseException] = []
    monkeypatch.setattr(RedisShredStore, "_read", read_then_race)
    shredder(settings, clock).erase(token, "req-race")
    assert len(raised) == 1 and not raced
    assert redis_keys_of(admin_client(settings), settings.redis_key_prefix, token) == []


def test_the_engine_redoes_a_batch_naming_an_erased_person_at_once_without_a_redis_error(settings) -> None:
    """The gateway engine's side of the refusal: the batch is redone at once (counted as
    ``streamgate_engine_retries_total{cause="erased"}``), not held as if Redis were down (no Redis error
    counted: that would page whoever watches StreamgateRedisErrors for an ordinary erasure)."""
    import threading

    from stream.apps.engine import GatewayEngine
    from stream.engine.contract import Record
    from stream.engine.produce import Sink
    from tests.engine.fakes import FakeProducer

    clock = Clock(T0)
    gw = build_gateway(settings, clock=clock)
    engine = GatewayEngine(settings, gw, bootstrap="127.0.0.1:1")
    engine.clients.sink = Sink(FakeProducer(), undeliverable=lambda o, err: None, on_retry=lambda n: None,  # type: ignore[arg-type]
                               on_fatal=lambda why: None, on_replaced=lambda o, err: None)
    value = orjson.dumps(event("usr_engine"))
    old = gw.process([RawRecord("clicks.raw", 0, 0, value, None)]).protected[0][0].decode()
    shredder(settings, clock).erase(old, "req-engine")
    gw.deks.invalidate(old)
    engine.hold.records = [Record("clicks.raw", 0, 1, value)]
    engine._process_held(threading.Event())  # refused: redone, not held
    assert engine.retries["erased"] == 1 and engine.retries["hold"] == 0 and len(engine.hold) == 1
    engine._process_held(threading.Event())
    assert not engine.hold.records and engine._queue.inflight == 1
    (ticket,) = engine._queue.tickets
    (out,) = ticket.outputs
    assert out.key is not None and out.key.decode() not in ("", old)
    snap = engine.metrics.snapshot()
    assert snap["redis_errors"] == 0 and snap["engine_retries"]["erased"] == 1


def test_an_erasure_by_user_id_redelivered_after_a_crash_still_names_the_person(tk2, monkeypatch) -> None:
    """The shredder dies after it deleted the person's tk2 secret and before it stored the erasure's record
    (nothing committed). The redelivered request can no longer find the person's token from the user_id; it
    takes the person from what the first attempt wrote before it destroyed anything, so the summary receipt
    and the tombstones name the person's real token (not a made-up one nobody has)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from stream.errors import KeyUnavailableError
    from stream.retention.core import MemorySink

    clock = Clock(T0)
    gw = build_gateway(tk2, clock=clock)
    token = gw.process([RawRecord("clicks.raw", 0, 0, orjson.dumps(event("usr_crash")), None)]).protected[0][0].decode()
    request = signed_request(tk2, "req-crash", user_id="usr_crash")

    first = ShredderEngine(tk2, clock=clock)
    first.shredder.sink = MemorySink()
    real_hscan = first.shredder.store.client.hscan_iter

    def crash(*a, **kw):
        raise RedisConnectionError("the process died here (injected)")

    monkeypatch.setattr(first.shredder.store.client, "hscan_iter", crash)  # right after the secret went
    with pytest.raises(KeyUnavailableError):
        first._erase_one(request, "t/0/0")
    monkeypatch.setattr(first.shredder.store.client, "hscan_iter", real_hscan)
    assert build_pseudonyms(tk2).lookup("usr_crash") is None  # the secret is gone already

    again = ShredderEngine(tk2, clock=clock)  # the restarted shredder; the request is read again
    again.shredder.sink = sink = MemorySink()
    again.tombstone_topics = again.shredder.tombstone_topics = ["analytics.partials"]
    again._erase_one(request, "t/0/0")
    (summary,) = [r for r in sink.receipts if r["kind"] == "erasure" and "keys_shredded" in r]  # the request's
    assert summary["subject"] == token, summary
    assert summary["keys_shredded"] == 1
    assert sink.tombstones == [("analytics.partials", token.encode())]
    assert redis_keys_of(admin_client(tk2), tk2.redis_key_prefix, token) == []
