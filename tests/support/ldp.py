"""Fixtures for the LDP tests: a policy from the shipped schema, protected events from the gateway core."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import orjson

from stream.crypto.deks import DekProvider, MemoryKeyStore
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.crypto.tokens import Tokenizer
from stream.gateway.core import Gateway, RawRecord
from stream.ldp.ledger import MemoryLedgerStore
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import Privatizer, ProtectedRecord
from stream.schema import load_schema

__all__ = ["SCHEMA", "make_privatizer", "protect", "protected_records"]

SCHEMA = "clickstream-event.v1"


def protect(events: list[dict], keyring: Keyring, clock: Callable[[], float] = time.time) -> list[tuple[bytes, bytes]]:
    """(key, value) of the protected form of valid raw events (gateway core, in-memory key store)."""
    deks = DekProvider(MemoryKeyStore(clock), LocalKMS(keyring), epoch_seconds=86400, retention_seconds=30 * 86400,
                       max_staleness_seconds=30, max_entries=10_000, clock=clock)
    gw = Gateway(load_schema(SCHEMA), Tokenizer(keyring), deks, max_event_bytes=65536, clock=clock)
    res = gw.process([RawRecord("t", 0, i, orjson.dumps(e)) for i, e in enumerate(events)])
    assert not res.dead_letters, res.reasons
    return res.protected


def protected_records(events: list[dict], keyring: Keyring, ts_ms: int | None = None) -> list[ProtectedRecord]:
    ts_ms = ts_ms if ts_ms is not None else int(time.time() * 1000)
    return [ProtectedRecord(v, ts_ms) for _k, v in protect(events, keyring)]


def make_privatizer(
    *, epsilon: float = 1.0, budget: float = 8.0, seed: int = 0, store: MemoryLedgerStore | None = None,
    clock: Callable[[], float] = time.time, memo_key: bytes | None = None, label_epsilon: float | None = None,
    ledger_key: bytes | None = None,
) -> Privatizer:
    schema = load_schema(SCHEMA)
    return Privatizer(
        LdpPolicy.from_schema(schema, epsilon),
        store if store is not None else MemoryLedgerStore(clock),
        memo_key=memo_key or os.urandom(32),
        subject_field=schema.subject_field,
        budget_epsilon=budget,
        epoch_seconds=86400,
        retention_seconds=30 * 86400,
        rng=np.random.default_rng(seed),
        clock=clock,
        shuffle_seed=seed,
        label_epsilon=label_epsilon,
        ledger_key=ledger_key,
    )
