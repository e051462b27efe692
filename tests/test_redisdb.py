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
