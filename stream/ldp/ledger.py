"""The person's ε ledger: one number per (person, epoch), charged per released report, capped, never refunded.

Every report the privatizer releases - a feature report or a labelled example - charges its
per-report ε to one ledger per (person token, retention epoch), capped by
``STREAMGATE_LDP_PERSON_EPSILON``. A report whose charge would take the ledger past the cap is
not released (it is not replaced by a stand-in). Charges are atomic per ledger and applied in
order, so two workers racing on one person never pass the cap together::

    id   = hex(HMAC-SHA256(K_ledger, utf8(token) || 0x00 || ascii(epoch))[:16])   K_ledger = derive("ldp-ledger")

The Redis form (key name in the person's slot, without the token; the charge script; the
exhauster the gateway runs for a person returning after an erasure) is
:mod:`stream.storage.ldp`. This module is the pure part: ids, expiry, the store protocol and an
in-memory store with the same semantics.

A person seen again after an erasure has a new tk2 token, hence new ledger ids; the gateway
sets the new token's ledger of every epoch up to the erasure's to the cap
(:class:`stream.storage.ldp.LedgerExhauster`), so the erasure refunds nothing.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

__all__ = ["LEDGER_PURPOSE", "MICRO", "Charge", "LedgerStore", "MemoryLedgerStore", "chargeable_epochs",
           "ledger_expire_at", "ledger_id"]

#: Ledgers are kept in integer micro-epsilon.
MICRO = 1_000_000
#: Keyring purpose of the ledger-id key.
LEDGER_PURPOSE = "ldp-ledger"


def ledger_id(key: bytes, subject: str, epoch: int) -> str:
    """The ledger id of (person token, epoch): no identifier in it."""
    return hmac.digest(key, subject.encode() + b"\x00" + str(epoch).encode(), "sha256")[:16].hex()


def ledger_expire_at(epoch: int, epoch_seconds: int, retention_seconds: int) -> int:
    """When the ledgers of ``epoch`` expire: its retention deadline (as its data keys)."""
    return (epoch + 1) * epoch_seconds + retention_seconds


def chargeable_epochs(last: int, now: float, epoch_seconds: int, retention_seconds: int) -> list[int]:
    """Epochs up to ``last`` whose ledgers can still be charged at ``now`` (deadline not passed)."""
    first = max(0, int((now - retention_seconds) // epoch_seconds) - 1)
    return [e for e in range(first, last + 1) if ledger_expire_at(e, epoch_seconds, retention_seconds) > now]


class Charge(NamedTuple):
    """Charge ``cost_micro`` to ledger ``ledger`` (of person token ``subject``; the Redis store puts it in
    the person's slot), expiring at ``expire_at``."""

    subject: str
    ledger: str
    cost_micro: int
    expire_at: int


class LedgerStore(Protocol):
    def charge(self, charges: Sequence[Charge], budget_micro: int) -> list[bool]:
        """Per charge, in order: True if it was applied (the ledger stays within ``budget_micro``), False
        if it would pass the cap (nothing charged; the report is not released). Raises
        :class:`~stream.errors.KeyUnavailableError` when the store is unreachable (nothing charged
        that the caller will release)."""
        ...


class MemoryLedgerStore:
    """In-memory :class:`LedgerStore` (expiry by an injected clock), for unit tests and benchmarks.
    ``ledgers``: ledger id -> micro-epsilon spent."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.ledgers: dict[str, int] = {}
        self.ledger_expiry: dict[str, int] = {}

    def charge(self, charges: Sequence[Charge], budget_micro: int) -> list[bool]:
        now = self._clock()
        out: list[bool] = []
        for c in charges:
            exp = self.ledger_expiry.get(c.ledger)
            if exp is not None and now >= exp:
                self.ledgers.pop(c.ledger, None)
                self.ledger_expiry.pop(c.ledger, None)
            spent = self.ledgers.get(c.ledger, 0)
            if spent + c.cost_micro > budget_micro:
                out.append(False)
                continue
            self.ledgers[c.ledger] = spent + c.cost_micro
            self.ledger_expiry[c.ledger] = c.expire_at
            out.append(True)
        return out

    def delete(self, subject: str, epoch: int | None = None) -> None:
        """An erasure: the ledgers stay (an erasure never refunds); nothing else is held per person."""
