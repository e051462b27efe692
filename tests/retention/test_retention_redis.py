"""The shredder on a real Redis: due keys, expiry races, concurrent shredders, erasure, the outbox,
cache invalidation. Receipts go to an in-memory sink here (the Kafka path is in tests/apps)."""

from __future__ import annotations

import threading
import time

import pytest
from redis.cluster import RedisCluster

from stream.components import (
    build_dek_provider,
    build_pseudonyms,
    invalidation_listener,
    redis_client,
    start_invalidation,
)
from stream.errors import DecryptError, KeyShreddedError, KeyUnavailableError
from stream.gateway.reader import SHREDDED_MASK, Shredded
from stream.redisdb import deadlines_key, pending_key
from stream.retention.core import MemorySink, Shredder, ShredderError
from stream.schema import output_validator
from stream.storage.invalidation import ShredListener, parse_message
from stream.storage.retention import RedisShredStore
from tests.support.fixtures import admin_client
from tests.support.shred import Clock, add_ldp_entries, key_name, protect, reader, redis_keys_of, token_of

pytestmark = pytest.mark.integration

E, R = 3600, 7200
T0 = 1_900_000_000.0  # the injected clock: far ahead of the real one, so keys are alive in Redis
VALID = output_validator("audit-receipt.v1")


@pytest.fixture
def settings(settings_factory):
    return settings_factory(epoch_seconds=E, retention_seconds=R, dek_cache_max_staleness_seconds=30)


def shredder(settings, clock, *, worker="w1", sink=None, **kw) -> tuple[Shredder, RedisShredStore, MemorySink]:
    store = RedisShredStore(redis_client(settings, "shredder"), settings.redis_key_prefix)
    sink = sink or MemorySink()
    return Shredder(store, sink, worker=worker, epoch_seconds=E, retention_seconds=R, clock=clock,
                    batch_size=kw.pop("batch_size", 7), **kw), store, sink


def expire_at(epoch: int) -> int:
    return (epoch + 1) * E + R


def test_after_retention_due_epochs_fail_typed_and_newer_epochs_decrypt(settings, redis_client) -> None:
    prefix = settings.redis_key_prefix
    clock = Clock(T0)
    users = [f"usr_ret{i}" for i in range(5)]
    old = protect(settings, clock, users, 3)          # epoch e0
    e0 = int(T0 // E)
    clock.advance(E)
    mid = protect(settings, clock, users, 2, seed=1)  # epoch e0 + 1
    clock.advance(E)
    new = protect(settings, clock, users, 2, seed=2)  # epoch e0 + 2
    for u in users:
        for e in (e0, e0 + 1, e0 + 2):
            add_ldp_entries(redis_client, prefix, token_of(settings, u), e, expire_at(e))

    clock.t = expire_at(e0 + 1)  # retention of e0 and e0 + 1 has passed; e0 + 2 not
    sh, store, sink = shredder(settings, clock)
    assert sh.shred_due() == 10
    assert sh.shred_due() == 0
    assert store.index_size() == 5  # the index of e0 + 2, spread over the persons' shards

    # readers at the *old* time: only the destroyed Redis key can explain the failure
    for ev in old + mid:
        with pytest.raises(KeyShreddedError):
            reader(settings, Clock(T0)).decrypt(ev)
        got = reader(settings, Clock(T0)).read(ev)
        assert got.shredded and all(isinstance(got.event[f], Shredded) for f in got.shredded)
        assert got.replaced("mask")[got.shredded[0]] == SHREDDED_MASK
    for ev in new:
        out = reader(settings, clock).decrypt(ev)
        assert out["email"].endswith("@example.org")
    for u in users:
        tok = token_of(settings, u)
        assert redis_keys_of(redis_client, prefix, tok) == sorted(
            key_name(prefix, k, tok, e0 + 2) for k in ("budget", "dek", "memo"))
    assert len(sink.receipts) == 10 and not any(VALID(r) for r in sink.receipts)
    assert all(r["key_id"] and not r["expired_before_shred"] for r in sink.receipts)
    assert store.pending_count() == 0 and store.due_count(clock.t) == 0


def test_redis_expiry_racing_the_shredder_still_yields_exactly_one_receipt(settings, redis_client) -> None:
    prefix = settings.redis_key_prefix
    clock = Clock(T0)
    protect(settings, clock, ["usr_race1", "usr_race2"], 1)
    tok1, tok2 = token_of(settings, "usr_race1"), token_of(settings, "usr_race2")
    e0 = int(T0 // E)
    add_ldp_entries(redis_client, prefix, tok1, e0, expire_at(e0))
    # Redis expires tok1's key (and memo/budget) before the shredder gets there
    for kind in ("dek", "memo", "budget"):
        redis_client.pexpire(key_name(prefix, kind, tok1, e0), 1)
    deadline = time.monotonic() + 10
    while redis_client.exists(key_name(prefix, "dek", tok1, e0)) and time.monotonic() < deadline:
        time.sleep(0.01)
    clock.t = expire_at(e0)
    sh, _, sink = shredder(settings, clock)
    assert sh.shred_due() == 2 and sh.shred_due() == 0
    by = {r["subject"]: r for r in sink.receipts}
    assert len(sink.receipts) == 2
    assert by[tok1]["key_id"] is None and by[tok1]["expired_before_shred"] is True
    assert by[tok2]["key_id"] and by[tok2]["expired_before_shred"] is False
    assert not any(VALID(r) for r in sink.receipts)


def test_concurrent_shredders_claim_each_key_once(settings) -> None:
    clock = Clock(T0)
    users = [f"usr_cc{i}" for i in range(60)]
    protect(settings, clock, users, 1)
    clock.t = expire_at(int(T0 // E))
    sinks: list[MemorySink] = []
    threads = []
    for i in range(4):
        sh, _, sink = shredder(settings, clock, worker=f"w{i}", batch_size=3)
        sinks.append(sink)
        threads.append(threading.Thread(target=sh.shred_due))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [r["receipt_id"] for s in sinks for r in s.receipts]
    assert len(ids) == len(set(ids)) == 60
    assert sum(1 for s in sinks if s.receipts) >= 1


def test_undelivered_receipts_are_finished_after_a_restart_and_by_others_after_the_lease(settings) -> None:
    clock = Clock(T0)
    protect(settings, clock, [f"usr_ob{i}" for i in range(5)], 1)
    clock.t = expire_at(int(T0 // E))
    a, store, sink_a = shredder(settings, clock, worker="a", lease_seconds=30)
    sink_a.fail_next = 1
    with pytest.raises(ShredderError):
        a.shred_due()
    assert store.pending_count() == 5 and store.due_count(clock.t) == 0
    b, _, _sink_b = shredder(settings, clock, worker="b", lease_seconds=30)
    assert b.recover() == 0
    a2, _, sink_a2 = shredder(settings, clock, worker="a")  # a restarts: its own entries at once
    assert a2.recover() == 5
    assert store.pending_count() == 0 and len(sink_a2.receipts) == 5
    # lease path
    clock2 = Clock(T0)
    protect(settings, clock2, ["usr_lease"], 1)
    clock2.t = expire_at(int(T0 // E))
    c, _, sink_c = shredder(settings, clock2, worker="c", lease_seconds=30)
    sink_c.fail_next = 1
    with pytest.raises(ShredderError):
        c.shred_due()
    d, _, sink_d = shredder(settings, clock2, worker="d", lease_seconds=30)
    assert d.recover() == 0
    clock2.advance(31)
    assert d.recover() == 1 and sink_d.receipts[0]["worker"] == "c"


def test_erasure_destroys_one_persons_keys_memos_budgets_only(settings, redis_client) -> None:
    prefix = settings.redis_key_prefix
    clock = Clock(T0)
    users = ["usr_gone", "usr_stays"]
    evs = protect(settings, clock, users, 2)
    clock.advance(E)
    evs += protect(settings, clock, users, 2, seed=3)
    gone, stays = token_of(settings, "usr_gone"), token_of(settings, "usr_stays")
    e0 = int(T0 // E)
    for tok in (gone, stays):
        for e in (e0, e0 + 1):
            add_ldp_entries(redis_client, prefix, tok, e, expire_at(e))
    sh, store, sink = shredder(settings, clock)
    out = sh.erase(gone, "req-redis-1", requested_at="2030-03-17T17:46:40Z")
    assert out.keys_shredded == 2 and not out.repeated
    assert redis_keys_of(redis_client, prefix, gone) == []
    assert len(redis_keys_of(redis_client, prefix, stays)) == 6
    rd = reader(settings, clock)
    for ev in evs:
        if ev["user_id"] == gone:
            with pytest.raises(KeyShreddedError):
                rd.decrypt(ev)
        else:
            assert rd.decrypt(ev)["email"].endswith("@example.org")
    kinds = sorted((r["kind"], r["request_id"]) for r in sink.receipts)
    assert kinds == [("erasure", "req-redis-1"), ("key_shredded", "req-redis-1"), ("key_shredded", "req-redis-1")]
    assert not any(VALID(r) for r in sink.receipts)
    # idempotent: the same request again re-delivers the same summary and touches nothing
    again = sh.erase(gone, "req-redis-1", requested_at="2030-03-17T17:46:40Z")
    assert again.repeated and sink.receipts[-1] == next(r for r in sink.receipts if r["kind"] == "erasure")
    assert len(redis_keys_of(redis_client, prefix, stays)) == 6
    # an unknown person still gets a receipt
    nobody = sh.erase(token_of(settings, "usr_never_seen"), "req-redis-2")
    assert nobody.keys_shredded == 0 and sink.receipts[-1]["kind"] == "erasure"
    assert store.pending_count() == 0


def test_shred_listener_parses_and_reports_messages(settings) -> None:
    assert parse_message(b"tok:12") == ("tok", 12)
    assert parse_message(b"tok:*") == ("tok", None)
    assert parse_message(b"garbage") is None and parse_message(b"tok:x") is None
    seen: list[tuple[str, int | None]] = []
    resets = []
    listener = ShredListener(lambda: redis_client(settings, "gateway"), settings.redis_key_prefix,
                             lambda s, e: seen.append((s, e)), on_reset=lambda: resets.append(1)).start()
    try:
        assert listener.ready.wait(10)
        pub = redis_client(settings, "shredder")
        pub.publish(f"{settings.redis_key_prefix}:shredded", "tokX:7")
        pub.publish(f"{settings.redis_key_prefix}:shredded", "tokY:*")
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == [("tokX", 7), ("tokY", None)] and resets == [1]
    finally:
        listener.stop()
    assert not listener.running


def test_shred_listener_reconnects_after_a_dropped_connection(settings) -> None:
    seen: list[tuple[str, int | None]] = []
    resets = []
    listener = ShredListener(lambda: redis_client(settings, "gateway"), settings.redis_key_prefix,
                             lambda s, e: seen.append((s, e)), on_reset=lambda: resets.append(1),
                             backoff_seconds=0.05).start()
    admin = admin_client(settings)
    try:
        assert listener.ready.wait(10)
        for server in ([admin.get_redis_connection(n) for n in admin.get_primaries()]
                       if isinstance(admin, RedisCluster) else [admin]):
            server.client_kill_filter(_type="pubsub")  # the server drops every subscriber connection
        deadline = time.monotonic() + 15
        while len(resets) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(resets) >= 2 and listener.reconnects >= 1
        admin.publish(f"{settings.redis_key_prefix}:shredded", "tokZ:1")
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == [("tokZ", 1)]
    finally:
        listener.stop()
        admin.close()


def test_gateway_cache_drops_an_erased_person_at_once_and_new_events_get_a_fresh_key(settings) -> None:
    """Invalidation by the channel: the staleness bound is an hour here, so only the message can
    explain the fresh key. Events from before the erasure stay unreadable."""
    s = settings.model_copy(update={"dek_cache_max_staleness_seconds": 3600.0})
    clock = Clock(T0)
    from stream.components import build_gateway

    gw = build_gateway(s, clock=clock, listen=True)
    listener = invalidation_listener(gw.deks)
    assert listener is not None and listener.ready.wait(10)
    try:
        before = protect(s, clock, ["usr_fresh", "usr_other"], 2, gateway=gw)
        tok = token_of(s, "usr_fresh")
        old_kid = next(ev["email"].split(".")[1] for ev in before if ev["user_id"] == tok)
        sh, _, _ = shredder(s, clock)
        sh.erase(tok, "req-fresh")
        deadline = time.monotonic() + 10
        while gw.deks.cache_size > 1 and time.monotonic() < deadline:  # usr_other stays cached
            time.sleep(0.02)
        after = protect(s, clock, ["usr_fresh"], 2, seed=9, gateway=gw)
        new_kids = {ev["email"].split(".")[1] for ev in after}
        assert len(new_kids) == 1 and old_kid not in new_kids
        rd = reader(s, clock)
        for ev in after:
            assert rd.decrypt(ev)["email"].endswith("@example.org")
        for ev in before:
            if ev["user_id"] == tok:
                with pytest.raises(KeyShreddedError):
                    rd.decrypt(ev)
            else:
                rd.decrypt(ev)
    finally:
        listener.stop()


def test_without_the_channel_the_staleness_bound_still_drops_the_key(settings) -> None:
    """No shred message: the erased key stays cached for less than the staleness bound; past it the key is
    dropped, and none is created again for the erased token (the erasure's marker)."""
    from stream.errors import SubjectErasedError

    clock = Clock(T0)
    provider = build_dek_provider(settings, clock=clock)
    tok = token_of(settings, "usr_ttl")
    e0 = int(T0 // E)
    k1 = provider.keys_for([tok], e0)[tok]
    sh, _, _ = shredder(settings, clock)
    sh.erase(tok, "req-ttl")
    assert provider.keys_for([tok], e0)[tok].key_id == k1.key_id  # cached, within the bound
    clock.advance(settings.dek_cache_max_staleness_seconds)
    with pytest.raises(SubjectErasedError):
        provider.keys_for([tok], e0)
    with pytest.raises(DecryptError):
        provider.key_for_decrypt(tok, e0, k1.key_id)


def test_start_invalidation_drops_one_epoch_or_all(settings) -> None:
    clock = Clock(T0)
    provider = build_dek_provider(settings, clock=clock)
    listener = start_invalidation(settings, provider)
    try:
        assert listener.ready.wait(10)
        e0 = int(T0 // E)
        provider.keys_for(["tokA", "tokB"], e0)
        provider.keys_for(["tokA"], e0 + 1)
        assert provider.cache_size == 3
        pub = redis_client(settings, "shredder")
        pub.publish(f"{settings.redis_key_prefix}:shredded", f"tokA:{e0}")
        deadline = time.monotonic() + 10
        while provider.cache_size != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert provider.cache_size == 2
        pub.publish(f"{settings.redis_key_prefix}:shredded", "tokA:*")
        while provider.cache_size != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert provider.cache_size == 1
    finally:
        listener.stop()


def test_foreign_index_members_and_outbox_entries_never_block_the_shredder(settings, redis_client) -> None:
    prefix = settings.redis_key_prefix
    clock = Clock(T0)
    protect(settings, clock, ["usr_ok"], 1)
    redis_client.zadd(deadlines_key(prefix, 3), {"no-epoch-here": 1})
    redis_client.hset(pending_key(prefix, 5), "garbage", b"not json")
    clock.t = expire_at(int(T0 // E))
    sh, store, sink = shredder(settings, clock)
    assert sh.tick() == 1
    assert [r["subject"] for r in sink.receipts] == [token_of(settings, "usr_ok")]
    assert store.due_count(clock.t) == 0


# --- the claim's steps are separate (one hash slot each): a crash between them ------------------------------


def test_a_crash_between_claim_and_destroy_is_finished_by_whoever_takes_the_entry(settings, redis_client) -> None:
    """Claimed (outbox entry written, index entry gone) but not destroyed: the restarted shredder destroys
    the keys before it delivers their receipts."""
    prefix = settings.redis_key_prefix
    clock = Clock(T0)
    users = [f"usr_cr{i}" for i in range(6)]
    protect(settings, clock, users, 1)
    e0 = int(T0 // E)
    clock.t = expire_at(e0)
    sh, store, sink = shredder(settings, clock, worker="a", batch_size=50)

    def crash(entries):
        raise KeyUnavailableError("killed between claim and destroy (simulated)")

    store._destroy_all = crash
    with pytest.raises(KeyUnavailableError):
        sh.shred_due()
    assert store.pending_count() == 6 and store.due_count(clock.t) == 0 and not sink.receipts
    toks = [token_of(settings, u) for u in users]
    assert all(redis_client.exists(key_name(prefix, "dek", t, e0)) for t in toks)  # still there

    again, store2, sink2 = shredder(settings, clock, worker="a")
    assert again.recover() == 6
    assert not any(redis_client.exists(key_name(prefix, "dek", t, e0)) for t in toks)
    assert sorted(r["subject"] for r in sink2.receipts) == sorted(toks)
    assert all(r["key_id"] for r in sink2.receipts) and store2.pending_count() == 0


def test_an_interrupted_erasure_is_redone_by_the_redelivered_request(settings, redis_client) -> None:
    prefix = settings.redis_key_prefix
    clock = Clock(T0)
    protect(settings, clock, ["usr_int"], 1)
    clock.advance(E)
    protect(settings, clock, ["usr_int"], 1, seed=2)
    tok = token_of(settings, "usr_int")
    pseud = build_pseudonyms(settings)
    pid, mark = (k(pseud.lookup_id("usr_int")) for k in (pseud.pid_key, pseud.perased_key))
    sh, store, sink = shredder(settings, clock)
    destroy_all = store._destroy_all
    store._destroy_all = lambda entries: (_ for _ in ()).throw(KeyUnavailableError("killed (simulated)"))
    with pytest.raises(KeyUnavailableError):
        sh.erase(tok, "req-int")
    assert len(redis_keys_of(redis_client, prefix, tok)) == 2 and store.pending_count() == 2
    assert redis_client.get(pid) is not None and redis_client.get(mark) is None  # secret and marker go together
    store._destroy_all = destroy_all
    out = sh.erase(tok, "req-int")  # the request comes again (its offset was not committed)
    assert out.keys_shredded == 2 and not out.repeated
    assert redis_keys_of(redis_client, prefix, tok) == []
    assert redis_client.get(pid) is None and redis_client.get(mark) == str(int(clock()) // E).encode()
    assert sorted(r["kind"] for r in sink.receipts) == ["erasure", "key_shredded", "key_shredded"]
    assert len({r["receipt_id"] for r in sink.receipts}) == 3
    assert store.pending_count() == 0


def test_erasure_destroys_keys_outside_the_retention_window_found_only_by_the_deadline_index(
        settings, redis_client) -> None:
    """A gateway made keys under a retention ten epochs longer, and one whose clock ran ten epochs
    ahead: both epochs lie outside the shredder's candidate epochs, the keys are alive in Redis, and
    only the deadline-index scan finds them. The erasure destroys them (and the memo); their events
    are shredded for any reader; another person's key of the same epoch stays."""
    from stream.retention.core import candidate_epochs

    prefix = settings.redis_key_prefix
    e0 = int(T0 // E)
    longer = settings.model_copy(update={"retention_seconds": R + 10 * E})
    old_clock, ahead_clock = Clock(T0 - 12 * E), Clock(T0 + 10 * E)
    old = protect(longer, old_clock, ["usr_window", "usr_window_kept"], 1)
    ahead = protect(settings, ahead_clock, ["usr_window"], 1, seed=2)
    tok, kept = token_of(settings, "usr_window"), token_of(settings, "usr_window_kept")
    e_old, e_ahead = e0 - 12, e0 + 10
    window = candidate_epochs(T0, epoch_seconds=E, retention_seconds=R)
    assert e_old not in window and e_ahead not in window
    add_ldp_entries(redis_client, prefix, tok, e_old, (e_old + 1) * E + R + 10 * E)
    assert redis_keys_of(redis_client, prefix, tok) == sorted(
        [key_name(prefix, "dek", tok, e_old), key_name(prefix, "memo", tok, e_old),
         key_name(prefix, "budget", tok, e_old), key_name(prefix, "dek", tok, e_ahead)])
    sh, _, sink = shredder(settings, Clock(T0))
    out = sh.erase(tok, "req-window")
    assert out.keys_shredded == 2
    assert redis_keys_of(redis_client, prefix, tok) == []
    assert redis_keys_of(redis_client, prefix, kept) == [key_name(prefix, "dek", kept, e_old)]
    for ev, clock in [*((ev, old_clock) for ev in old), *((ev, ahead_clock) for ev in ahead)]:
        if ev["user_id"] == tok:
            with pytest.raises(KeyShreddedError):
                reader(longer, clock).decrypt(ev)
        else:
            assert reader(longer, clock).decrypt(ev)["email"].endswith("@example.org")
    assert {r["epoch"] for r in sink.receipts if r["kind"] == "key_shredded"} == {e_old, e_ahead}


@pytest.mark.parametrize("skewed", [False, True])
def test_a_claim_fills_its_batch_from_uneven_shards_and_takes_every_due_member(settings, redis_client,
                                                                             skewed: bool) -> None:
    """Each shard is asked for its share of the batch (not the whole batch): a batch still fills when
    every due member sits in one shard, and repeated claims take every member exactly once."""
    prefix = settings.redis_key_prefix
    store = RedisShredStore(redis_client, prefix, shards=16)
    subjects = [f"tk1_{i:022x}" for i in range(4000)]
    # skewed: only the people of shard 3
    subjects = [s for s in subjects if not skewed or store.shard_of(s) == 3][:230]
    for s in subjects:
        redis_client.zadd(deadlines_key(prefix, store.shard_of(s)), {f"{s}:5": 1000})
    redis_client.zadd(deadlines_key(prefix, 0), {"tk1_notdue:5": 5000})
    claimed: list[str] = []
    sizes = []
    while True:
        got = store.claim_due(2000, 100, at=2000.0, worker="w", lease_until=3000.0)
        sizes.append(len(got))
        claimed += [f"{e.subject}:{e.epoch}" for e in got]
        if len(got) < 100:
            break
    assert sizes == [100, 100, 30]
    assert sorted(claimed) == sorted(f"{s}:5" for s in subjects)  # each once, none not due
    assert store.due_count(2000) == 0 and store.index_size() == 1
