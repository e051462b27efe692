"""The pure parts left in stream.crypto when its Redis stores moved to stream.storage: the wrap-limit
logic (against an in-memory count) and the tk2 derivations and stored-value format."""

from __future__ import annotations

import logging
import os

import pytest

from stream.crypto.deks import DekProvider, MemoryKeyStore
from stream.crypto.keyring import Keyring
from stream.crypto.kms import KekUsageExceededError, LocalKMS, MemoryWrapCounter
from stream.crypto.tokens import PSEUDONYM_PREFIX, PseudonymKeys
from stream.errors import KeyUnavailableError
from tests.support.clock import Clock

DAY = 86400
T0 = 20000 * DAY + 100.0


def test_wrap_limit_refuses_before_any_wrap(caplog) -> None:
    clock = Clock(T0)
    store = MemoryKeyStore(clock=clock)
    counter = MemoryWrapCounter(warn_at=3, refuse_at=4)
    ring = Keyring.generate()
    deks = DekProvider(store, LocalKMS(ring), epoch_seconds=DAY, retention_seconds=DAY, max_staleness_seconds=30,
                       max_entries=100, clock=clock, wrap_counter=counter)
    epoch = deks.epoch_of(T0)
    deks.keys_for(["tk1_a", "tk1_b"], epoch)
    assert counter.totals == {ring.primary_id: 2} and counter.warnings == 0
    with caplog.at_level(logging.WARNING, logger="streamgate.kms"):
        deks.keys_for(["tk1_c"], epoch)  # 3: warned
    assert counter.warnings == 1 and "rotate" in caplog.text
    with pytest.raises(KekUsageExceededError) as info:
        deks.keys_for(["tk1_d", "tk1_e"], epoch)  # 5 > 4: nothing wrapped, nothing stored
    assert isinstance(info.value, KeyUnavailableError) and counter.refusals == 1
    assert store.get_many([("tk1_d", epoch), ("tk1_e", epoch)]) == [None, None]
    assert deks.keys_for(["tk1_a"], epoch)["tk1_a"].subject == "tk1_a"  # existing keys: no wrap, no count
    with pytest.raises(ValueError):
        MemoryWrapCounter(warn_at=5, refuse_at=4)


def test_pseudonym_keys_derivations() -> None:
    ring = Keyring.generate()
    keys = PseudonymKeys(ring, "user", LocalKMS(ring))
    token, value = keys.new_value("alice", "sg:pid:{a}")
    assert token.startswith(PSEUDONYM_PREFIX) and len(token) == len(PSEUDONYM_PREFIX) + 22
    assert keys.parse(value) == token and keys.open(value, "sg:pid:{a}", "alice") == token
    assert value.startswith(b"3." + token.encode() + b".") and len(value) > len(token) + 3 + 32  # wrapped
    # bound to its key name, its token and its person: moved, re-labelled or someone else's does not open
    other, _ = keys.new_value("bob", "sg:pid:{b}")
    for raw, name, person in ((value, "sg:pid:{b}", "alice"), (b"3." + other.encode() + value[len(token) + 2:],
                              "sg:pid:{a}", "alice"), (value, "sg:pid:{a}", "bob")):
        with pytest.raises(KeyUnavailableError):
            keys.open(raw, name, person)
    with pytest.raises(KeyUnavailableError, match="wrap key"):
        PseudonymKeys(ring, "user").new_value("alice", "sg:pid:{a}")  # no KMS (the shredder): reads only
    assert PseudonymKeys(ring, "user").parse(value) == token
    secret = os.urandom(32)  # a value written before the wrap still opens
    legacy = b"2." + keys.token_from(secret, "alice").encode() + b"." + secret
    assert keys.open(legacy, "sg:pid:{a}", "alice") == keys.token_from(secret, "alice")
    again, _ = keys.new_value("alice", "sg:pid:{a}")
    assert again != token  # a new secret, a new token: the old one is not recomputable without it
    assert keys.lookup_id("alice") == PseudonymKeys(ring, "user").lookup_id("alice")  # found by user_id alone
    assert keys.lookup_id("alice") != PseudonymKeys(ring, "session").lookup_id("alice")
    assert keys.lookup_id("alice") != PseudonymKeys(Keyring.generate(), "user").lookup_id("alice")
    assert keys.absent_token("r1") != keys.absent_token("r2")
    for bad in (None, b"", b"2." + token.encode() + b"." + os.urandom(31), b"1." + value[2:], b"3." + token.encode()):
        with pytest.raises(KeyUnavailableError, match="malformed"):
            keys.parse(bad)
    with pytest.raises(TypeError) as info:
        keys.lookup_id(b"alice")  # type: ignore[arg-type]
    assert "alice" not in str(info.value)
