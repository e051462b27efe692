"""KEK usage limits on a real Redis: wraps counted per KEK (one INCRBY per batch), a warning at
``warn_at``, new wraps refused beyond ``refuse_at`` until the KEK is rotated (limits lowered here)."""

from __future__ import annotations

import logging
import time

import pytest

from stream.crypto.deks import DekProvider
from stream.crypto.keyring import Keyring
from stream.crypto.kms import KekUsageExceededError, LocalKMS
from stream.errors import KeyUnavailableError
from stream.redisdb import RedisClient
from stream.storage.keys import RedisKeyStore
from stream.storage.keys import RedisWrapCounter as WrapCounter

pytestmark = pytest.mark.integration
DAY = 86400


def provider(client: RedisClient, prefix: str, ring: Keyring, counter: WrapCounter) -> DekProvider:
    return DekProvider(RedisKeyStore(client, prefix=prefix), LocalKMS(ring), epoch_seconds=DAY,
                       retention_seconds=7 * DAY, max_staleness_seconds=30.0, max_entries=1000,
                       wrap_counter=counter)


def test_wraps_are_counted_warned_and_refused_until_rotation(redis_client, redis_prefix, caplog) -> None:
    ring = Keyring.generate()
    counter = WrapCounter(redis_client, redis_prefix, warn_at=4, refuse_at=6)
    deks = provider(redis_client, redis_prefix, ring, counter)
    epoch = int(time.time() // DAY)
    deks.keys_for(["tk1_a", "tk1_b", "tk1_c"], epoch)  # one batch: one INCRBY of 3
    assert int(redis_client.get(counter.key_name(ring.primary_id))) == 3 and counter.warnings == 0
    deks.keys_for(["tk1_a", "tk1_b"], epoch)  # existing keys: no wrap, no count
    assert counter.last_total[ring.primary_id] == 3
    with caplog.at_level(logging.WARNING, logger="streamgate.kms"):
        deks.keys_for(["tk1_d", "tk1_e", "tk1_f"], epoch)  # 6: at the limit, still allowed, warned
    assert counter.warnings == 1 and "rotate" in caplog.text
    # another worker sharing the count (same Redis key) is refused too, before wrapping anything
    other = provider(redis_client, redis_prefix, ring, WrapCounter(redis_client, redis_prefix, warn_at=4, refuse_at=6))
    with pytest.raises(KekUsageExceededError, match="rotate the KEK") as info:
        other.keys_for(["tk1_g"], epoch)
    assert isinstance(info.value, KeyUnavailableError)  # the gateway fails closed and holds the batch
    assert redis_client.get(RedisKeyStore(redis_client, redis_prefix).key_name("tk1_g", epoch)) is None
    # old keys keep working; a rotated KEK starts its own count
    assert deks.keys_for(["tk1_a"], epoch)["tk1_a"].subject == "tk1_a"
    rotated = ring.rotated()
    fresh = provider(redis_client, redis_prefix, rotated, WrapCounter(redis_client, redis_prefix, warn_at=4, refuse_at=6))
    assert fresh.keys_for(["tk1_g"], epoch)["tk1_g"].subject == "tk1_g"
    assert int(redis_client.get(counter.key_name(rotated.primary_id))) == 1


def test_data_key_wraps_are_reserved_a_block_at_a_time(redis_client, redis_prefix) -> None:
    """With a block of 4: one INCRBY covers the first 4 new keys (no round trip for the 4th); a batch
    beyond what is left reserves another block; a block that would pass the limit is refused whole."""
    ring = Keyring.generate()
    counter = WrapCounter(redis_client, redis_prefix, warn_at=10, refuse_at=10)
    deks = DekProvider(RedisKeyStore(redis_client, prefix=redis_prefix), LocalKMS(ring), epoch_seconds=DAY,
                       retention_seconds=7 * DAY, max_staleness_seconds=30.0, max_entries=1000,
                       wrap_counter=counter, wrap_block=4)
    epoch = int(time.time() // DAY)
    count = lambda: int(redis_client.get(counter.key_name(ring.primary_id)))  # noqa: E731
    deks.keys_for(["tk1_a", "tk1_b", "tk1_c"], epoch)
    assert count() == 4
    deks.keys_for(["tk1_d", "tk1_a"], epoch)  # the block's last wrap: no INCRBY
    assert count() == 4
    deks.keys_for(["tk1_e", "tk1_f"], epoch)
    assert count() == 8
    with pytest.raises(KekUsageExceededError):  # 8 + 4 > 10: refused before anything is wrapped
        deks.keys_for(["tk1_g", "tk1_h", "tk1_i"], epoch)
    assert redis_client.get(RedisKeyStore(redis_client, redis_prefix).key_name("tk1_g", epoch)) is None


def test_limits_must_be_ordered(redis_client) -> None:
    with pytest.raises(ValueError):
        WrapCounter(redis_client, "p", warn_at=10, refuse_at=5)
