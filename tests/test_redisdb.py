"""The key layout helpers of stream.redisdb (no server)."""

from __future__ import annotations

import pytest

from stream.redisdb import (
    SLOTS,
    check_prefix,
    deadline_shard,
    deadlines_key,
    key_slot,
    pending_key,
    person_tag,
    slot_tag,
)


def test_slot_tags_name_every_slot_and_nothing_else() -> None:
    tags = [slot_tag(s) for s in range(SLOTS)]
    assert [key_slot(f"sg:ledger:{{{t}}}:abc".encode()) for t in tags] == list(range(SLOTS))
    assert max(len(t) for t in tags) <= 5 and all(c in "0123456789abcdef" for t in tags for c in t)


def test_a_persons_keys_and_its_ledger_share_a_slot() -> None:
    tok = "tk1_Q2x4mM0dX8yVb7nL1pZ3kA"
    slot = key_slot(f"sg:dek:{person_tag(tok)}:20000".encode())
    assert key_slot(f"sg:memo:{person_tag(tok)}:20001".encode()) == slot
    assert key_slot(f"sg:ledger:{{{slot_tag(slot)}}}:0123abcd".encode()) == slot


def test_shards_are_stable_and_spread() -> None:
    tokens = [f"tk1_person{i:05d}" for i in range(1600)]
    counts = [0] * 16
    for t in tokens:
        counts[deadline_shard(t, 16)] += 1
    assert min(counts) > 60 and max(counts) < 140  # 100 expected per shard
    assert deadline_shard("tk1_a", 16) == deadline_shard("tk1_a", 16)
    assert deadlines_key("sg", 7) == "sg:deadlines:{shard-07}" and pending_key("sg", 7) == "sg:shredder:pending:{shard-07}"
    assert key_slot(deadlines_key("sg", 7).encode()) == key_slot(pending_key("sg", 7).encode())


@pytest.mark.parametrize("bad", ["", "a:b", "a{b", "b}"])
def test_prefixes_with_separators_or_braces_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_prefix(bad)


def test_commands_are_packed_in_c_byte_for_byte_as_redis_py_packs_them() -> None:
    """connect()'s connections pack str, bytes, int and float arguments with hiredis: the same RESP
    bytes as redis-py's own packer; other arguments keep redis-py's packing and its errors."""
    from redis.connection import PythonRespSerializer
    from redis.exceptions import DataError

    from stream.redisdb import _CPacker, connect

    client = connect("redis://127.0.0.1:1/0")  # never connected: packing only
    conn = client.connection_pool.make_connection()
    packer = conn._command_packer
    assert isinstance(packer, _CPacker)
    reference = PythonRespSerializer(conn._buffer_cutoff, conn.encoder.encode)
    for args in [("SET", "sg:dek:{tk1_a}:5", b"1.\x00\xff", "NX", "EXAT", 1_900_000_000),
                 ("EVALSHA", "ab" * 20, 2, "k1", "k2", "é", 0.1, 1e300, -7, b""),
                 ("CONFIG SET", "maxmemory", "0"), ("ZADD", "z", memoryview(b"1"), "m")]:
        assert b"".join(packer.pack(*args)) == b"".join(reference.pack(*args)), args
    for bad in (True, None):
        with pytest.raises(DataError):
            packer.pack("SET", "k", bad)
