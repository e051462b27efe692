"""DekProvider against the in-memory store: creation, caching, staleness, eviction, shredding, failures."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from stream.crypto.deks import DataKey, DekProvider, MemoryKeyStore
from stream.crypto.fields import decrypt_value, encrypt_value, parse_ciphertext
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.errors import DecryptError, KeyShreddedError, KeyUnavailableError
from tests.support.clock import Clock

DAY = 86400
EPOCH = 20000
T0 = EPOCH * DAY + 100.0




class CountingStore(MemoryKeyStore):
    """MemoryKeyStore that counts calls and can be told to fail or to hide keys from get_many."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.gets = 0
        self.creates = 0
        self.fail: BaseException | None = None
        self.blind_gets = False

    def get_many(self, refs: Sequence[tuple[str, int]]) -> list[bytes | None]:
        self.gets += 1
        if self.fail is not None:
            raise self.fail
        values = super().get_many(refs)
        return [None] * len(values) if self.blind_gets else values

    def create_many(self, items: Sequence[tuple[str, int, bytes, int]]) -> list[bytes]:
        self.creates += 1
        if self.fail is not None:
            raise self.fail
        return super().create_many(items)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(clock: Clock) -> CountingStore:
    return CountingStore(clock)


@pytest.fixture
def kms() -> LocalKMS:
    return LocalKMS(Keyring.generate())


def provider(store: MemoryKeyStore, kms: LocalKMS, clock: Clock, **kw: float) -> DekProvider:
    args = {
        "epoch_seconds": DAY,
        "retention_seconds": 30 * DAY,
        "max_staleness_seconds": 30.0,
        "max_entries": 1000,
    }
    args.update(kw)
    return DekProvider(store, kms, clock=clock, **args)  # type: ignore[arg-type]


def test_epoch_and_deadline(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    p = provider(store, kms, clock)
    assert p.epoch_of(T0) == EPOCH
    assert p.epoch_of(EPOCH * DAY) == EPOCH and p.epoch_of(EPOCH * DAY - 0.5) == EPOCH - 1
    assert p.expire_at(EPOCH) == (EPOCH + 1) * DAY + 30 * DAY


def test_create_once_then_cache_hit(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    p = provider(store, kms, clock)
    keys = p.keys_for(["tk1_a", "tk1_b", "tk1_a"], EPOCH)
    assert set(keys) == {"tk1_a", "tk1_b"}
    assert (store.gets, store.creates) == (1, 1)
    assert (p.stats.hits, p.stats.misses, p.stats.created) == (0, 2, 2)
    assert all(len(k.key_id) == 16 and int(k.key_id, 16) >= 0 for k in keys.values())
    assert keys["tk1_a"].key_id != keys["tk1_b"].key_id
    assert store.deadlines == {f"tk1_a:{EPOCH}": p.expire_at(EPOCH), f"tk1_b:{EPOCH}": p.expire_at(EPOCH)}

    again = p.keys_for(["tk1_a", "tk1_b"], EPOCH)
    assert (store.gets, store.creates) == (1, 1)  # served from the cache
    assert (p.hits, p.misses) == (2, 2)
    assert {s: k.key_id for s, k in again.items()} == {s: k.key_id for s, k in keys.items()}

    # another provider (another worker) reads the same stored key, not a new one
    other = provider(store, kms, clock)
    assert other.keys_for(["tk1_a"], EPOCH)["tk1_a"].key_id == keys["tk1_a"].key_id
    text = encrypt_value(keys["tk1_a"], "x@y.z", schema_id="s", field_path="email")
    assert (
        decrypt_value(
            other.key_for_decrypt("tk1_a", EPOCH, keys["tk1_a"].key_id),
            text,
            schema_id="s",
            field_path="email",
        )
        == "x@y.z"
    )


def test_stale_entry_is_reread(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    p = provider(store, kms, clock, max_staleness_seconds=30)
    first = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    clock.advance(29.9)
    p.keys_for(["tk1_a"], EPOCH)
    assert store.gets == 1
    clock.advance(0.2)
    assert p.keys_for(["tk1_a"], EPOCH)["tk1_a"].key_id == first.key_id
    assert store.gets == 2 and store.creates == 1
    # a clock stepping backwards does not extend a cache entry's life
    clock.advance(-100)
    p.keys_for(["tk1_a"], EPOCH)
    assert store.gets == 3


def test_cache_never_outlives_a_shred_by_more_than_staleness(
    store: CountingStore, kms: LocalKMS, clock: Clock
) -> None:
    p = provider(store, kms, clock, max_staleness_seconds=10)
    old = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    store.delete("tk1_a", EPOCH)
    clock.advance(5)
    assert p.key_for_decrypt("tk1_a", EPOCH, old.key_id) is old  # within the bound: still cached
    clock.advance(5)
    with pytest.raises(KeyShreddedError):
        p.key_for_decrypt("tk1_a", EPOCH, old.key_id)


def test_eviction_bound(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    p = provider(store, kms, clock, max_entries=3)
    subjects = [f"tk1_{i}" for i in range(5)]
    keys = p.keys_for(subjects, EPOCH)
    assert len(keys) == 5  # the caller still gets every key
    assert p.cache_size == 3
    gets = store.gets
    p.keys_for(subjects[2:], EPOCH)  # the 3 newest: hits
    assert store.gets == gets
    p.keys_for([subjects[2]], EPOCH)  # touch 2: now most recently used
    p.keys_for([subjects[0]], EPOCH)  # evicted earlier: a store read; evicts the LRU (3)
    assert store.gets == gets + 1 and p.cache_size == 3
    p.keys_for([subjects[2]], EPOCH)
    assert store.gets == gets + 1
    p.keys_for([subjects[3]], EPOCH)
    assert store.gets == gets + 2
    assert p.keys_for([subjects[0]], EPOCH)[subjects[0]].key_id == keys[subjects[0]].key_id


def test_shredded_key_and_recreation(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    p = provider(store, kms, clock)
    old = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    old_text = encrypt_value(old, "alice@example.com", schema_id="s", field_path="email")
    assert old_text is not None

    store.delete("tk1_a", EPOCH)  # the shredder
    p.invalidate("tk1_a")  # ... and its cache notification
    with pytest.raises(KeyShreddedError):
        p.key_for_decrypt("tk1_a", EPOCH, old.key_id)

    new = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]  # a new event of the same person
    assert new.key_id != old.key_id
    header = parse_ciphertext(old_text)
    with pytest.raises(KeyShreddedError) as info:
        p.key_for_decrypt("tk1_a", header.epoch, header.key_id)
    assert "tk1_a" not in str(info.value)
    # even a fresh provider, and even handing it the new key, cannot read the old ciphertext
    with pytest.raises(KeyShreddedError):
        provider(store, kms, clock).key_for_decrypt("tk1_a", EPOCH, old.key_id)
    with pytest.raises(DecryptError):
        decrypt_value(new, old_text, schema_id="s", field_path="email")
    # the new key works for new ciphertexts
    new_text = encrypt_value(new, 1, schema_id="s", field_path="n")
    assert (
        decrypt_value(p.key_for_decrypt("tk1_a", EPOCH, new.key_id), new_text, schema_id="s", field_path="n")
        == 1
    )


def test_recreated_by_another_worker_is_found_despite_fresh_cache(
    store: CountingStore, kms: LocalKMS, clock: Clock
) -> None:
    a, b = provider(store, kms, clock), provider(store, kms, clock)
    old = a.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    store.delete("tk1_a", EPOCH)
    new = b.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    # a's cache still holds the old key (fresh), but a ciphertext under the new key must not look shredded
    assert a.key_for_decrypt("tk1_a", EPOCH, new.key_id).key_id == new.key_id
    with pytest.raises(KeyShreddedError):
        a.key_for_decrypt("tk1_a", EPOCH, old.key_id)


def test_invalidate(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    p = provider(store, kms, clock)
    p.keys_for(["tk1_a", "tk1_b"], EPOCH)
    p.keys_for(["tk1_a"], EPOCH + 1)
    assert p.cache_size == 3
    p.invalidate("tk1_a")
    assert p.cache_size == 1
    p.invalidate()
    assert p.cache_size == 0


def test_retention_deadline_is_enforced_even_when_cached(
    store: CountingStore, kms: LocalKMS, clock: Clock
) -> None:
    p = provider(store, kms, clock, max_staleness_seconds=10**9, retention_seconds=100)
    key = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    clock.t = p.expire_at(EPOCH) - 1
    assert p.key_for_decrypt("tk1_a", EPOCH, key.key_id) is key
    clock.t = p.expire_at(EPOCH)
    with pytest.raises(KeyShreddedError):
        p.key_for_decrypt("tk1_a", EPOCH, key.key_id)
    assert store.get_many([("tk1_a", EPOCH)]) == [None]  # the store expired it as Redis would
    with pytest.raises(ValueError):
        p.keys_for(["tk1_a"], EPOCH)  # no key is born shredded


def test_concurrent_creator_wins(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    first = provider(store, kms, clock).keys_for(["tk1_a"], EPOCH)["tk1_a"]
    store.blind_gets = True  # the second worker read "absent" just before the first one's create landed
    loser = provider(store, kms, clock)
    adopted = loser.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    assert adopted.key_id == first.key_id
    assert loser.stats.created == 0
    text = encrypt_value(first, "v", schema_id="s", field_path="f")
    assert decrypt_value(adopted, text, schema_id="s", field_path="f") == "v"


@pytest.mark.parametrize(
    "failure", [KeyUnavailableError("store down"), ConnectionError("refused"), TimeoutError()]
)
def test_store_failure_raises_key_unavailable(
    store: CountingStore, kms: LocalKMS, clock: Clock, failure: BaseException
) -> None:
    p = provider(store, kms, clock)
    p.keys_for(["tk1_cached"], EPOCH)
    store.fail = failure
    with pytest.raises(KeyUnavailableError) as info:
        p.keys_for(["tk1_cached", "tk1_secret_person"], EPOCH)
    assert "tk1_secret_person" not in str(info.value)
    with pytest.raises(KeyUnavailableError):
        p.key_for_decrypt("tk1_other", EPOCH, "0123456789abcdef")
    store.fail = None
    assert set(p.keys_for(["tk1_cached", "tk1_secret_person"], EPOCH)) == {"tk1_cached", "tk1_secret_person"}


def test_create_failure_raises_key_unavailable(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    class FailingCreate(CountingStore):
        def create_many(self, items: Sequence[tuple[str, int, bytes, int]]) -> list[bytes]:
            raise ConnectionError("down")

    p = provider(FailingCreate(clock), kms, clock)
    with pytest.raises(KeyUnavailableError):
        p.keys_for(["tk1_a"], EPOCH)
    assert p.cache_size == 0


def test_unwrappable_stored_key_fails_closed(store: CountingStore, clock: Clock) -> None:
    p = provider(store, LocalKMS(Keyring.generate()), clock)
    key = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    # a worker whose keyring lacks the wrapping KEK must not silently create a second key
    q = provider(store, LocalKMS(Keyring.generate()), clock)
    with pytest.raises(KeyUnavailableError):
        q.keys_for(["tk1_a"], EPOCH)
    with pytest.raises(KeyUnavailableError):
        q.key_for_decrypt("tk1_a", EPOCH, key.key_id)
    # a stored value moved to another person's slot does not unwrap (AAD binds subject/epoch/key id)
    (value,) = store.get_many([("tk1_a", EPOCH)])
    assert value is not None
    store.create_many([("tk1_b", EPOCH, value, p.expire_at(EPOCH))])
    with pytest.raises(KeyUnavailableError):
        p.key_for_decrypt("tk1_b", EPOCH, key.key_id)


def test_invalid_subject_rejected_without_echo(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    p = provider(store, kms, clock)
    with pytest.raises(ValueError) as info:
        p.keys_for(["alice@example.com"], EPOCH)
    assert "alice" not in str(info.value)
    with pytest.raises(DecryptError) as dinfo:
        p.key_for_decrypt("alice@example.com", EPOCH, "0123456789abcdef")
    assert "alice" not in str(dinfo.value)


def test_data_key_equality_and_repr(store: CountingStore, kms: LocalKMS, clock: Clock) -> None:
    key = provider(store, kms, clock).keys_for(["tk1_a"], EPOCH)["tk1_a"]
    assert isinstance(key, DataKey)
    assert "aead" not in repr(key) and key.key_id in repr(key)
    with pytest.raises(AttributeError):
        key.key_id = "x"  # type: ignore[misc]


def test_forged_key_references_are_not_reported_as_shredded(
    store: CountingStore, kms: LocalKMS, clock: Clock
) -> None:
    p = provider(store, kms, clock)
    keys = p.keys_for(["tk1_a", "tk1_b"], EPOCH)
    a = keys["tk1_a"]
    assert re.fullmatch(r"[0-9a-f]{16}", a.key_id)
    flipped = a.key_id[:-1] + ("0" if a.key_id[-1] != "0" else "1")
    forged_refs = [
        ("tk1_a", EPOCH, flipped),  # header key id edited
        ("tk1_a", EPOCH, a.key_id[:8] + "0" * 8),
        ("tk1_a", EPOCH - 1, a.key_id),  # header epoch edited (no key there)
        ("tk1_a", EPOCH + 1, a.key_id),
        ("tk1_b", EPOCH, a.key_id),  # ciphertext moved to another person
        ("tk1_c", EPOCH, a.key_id),  # ... who has no key at all
        ("tk1_a", EPOCH, "not-hex"),
        ("tk1_a", 0, a.key_id),  # an epoch long past its retention
    ]
    for subject, epoch, key_id in forged_refs:
        with pytest.raises(DecryptError) as info:
            p.key_for_decrypt(subject, epoch, key_id)
        assert type(info.value) is DecryptError, (subject, epoch, key_id)
    # the genuine id of a shredded key is reported as shredded, also once its retention has passed
    store.delete("tk1_a", EPOCH)
    p.invalidate()
    with pytest.raises(KeyShreddedError):
        p.key_for_decrypt("tk1_a", EPOCH, a.key_id)
    clock.t = p.expire_at(EPOCH) + 1
    with pytest.raises(KeyShreddedError):
        p.key_for_decrypt("tk1_a", EPOCH, a.key_id)


def test_key_ids_are_authenticated_by_the_root_key_only(store: CountingStore, clock: Clock) -> None:
    # id tags come from the root key: they survive KEK rotation, so shredded keys stay "shredded"
    ring = Keyring.generate()
    p = provider(store, LocalKMS(ring), clock)
    a = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    store.delete("tk1_a", EPOCH)
    with pytest.raises(KeyShreddedError):
        provider(store, LocalKMS(ring.rotated()), clock).key_for_decrypt("tk1_a", EPOCH, a.key_id)


def test_without_id_authentication_a_missing_key_is_shredded(store: CountingStore, clock: Clock) -> None:
    class OpaqueKMS:  # a non-local KMS (Vault, cloud): no id key unless one is passed
        def __init__(self) -> None:
            self._inner = LocalKMS(Keyring.generate())

        def wrap(self, plaintext_key: bytes, aad: bytes) -> bytes:
            return self._inner.wrap(plaintext_key, aad)

        def unwrap(self, blob: bytes, aad: bytes) -> bytes:
            return self._inner.unwrap(blob, aad)

    p = provider(store, OpaqueKMS(), clock)  # type: ignore[arg-type]
    a = p.keys_for(["tk1_a"], EPOCH)["tk1_a"]
    assert re.fullmatch(r"[0-9a-f]{16}", a.key_id)
    with pytest.raises(KeyShreddedError):
        p.key_for_decrypt("tk1_a", EPOCH, "0123456789abcdef")
