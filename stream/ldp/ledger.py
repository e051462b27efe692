"""The person's ε ledger in one place: its id, its Redis key, its expiry, and exhausting it.

Used by the privatizer (which charges it, :mod:`stream.ldp.memo`) and by the gateway (which
exhausts the ledgers of a person who returns after an erasure)::

    id   = hex(HMAC-SHA256(K_ledger, utf8(token) || 0x00 || ascii(epoch))[:16])   K_ledger = derive("ldp-ledger")
    tag  = slot_tag(key_slot("{" + token + "}"))                                  (stream.redisdb)
    <prefix>:ledger:{<tag>}:<id>   integer micro-epsilon spent,
                                   EXPIREAT = (epoch + 1) * epoch_seconds + retention_seconds

The braces are a hash tag: the ledger lives in the slot of the person's other keys (memos, data
key) without naming the token - ``tag`` is the shortest string that hashes to that slot, shared
by some 1/16384 of all people - so the privatizer's memo script charges it in the person's slot.
Every ledger of one person is in one slot, whatever the epoch. On one server the same names are
used (the braces are then only characters).

A person seen again after an erasure has a new tk2 token, hence new ledger ids. The shredder
leaves ``<prefix>:perased:{<lookup id>}`` = the erasure's epoch (:mod:`stream.crypto.tokens`);
the gateway's mint reports it and :class:`LedgerExhauster` sets the new token's ledger of every
epoch up to that one that can still be charged to the cap, so the erasure refunds nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from stream.errors import KeyUnavailableError
from stream.redisdb import (
    REDIS_ERRORS,
    RedisClient,
    check_prefix,
    eval_many,
    is_cluster,
    key_slot,
    person_tag,
    slot_tag,
)

__all__ = ["LEDGER_PURPOSE", "MICRO", "LedgerExhauster", "chargeable_epochs", "ledger_expire_at", "ledger_id",
           "ledger_key", "ledger_slot"]

#: Ledgers are kept in integer micro-epsilon.
MICRO = 1_000_000
#: Keyring purpose of the ledger-id key.
LEDGER_PURPOSE = "ldp-ledger"


def ledger_id(key: bytes, subject: str, epoch: int) -> str:
    """The ledger id of (person token, epoch): no identifier in it."""
    return hmac.digest(key, subject.encode() + b"\x00" + str(epoch).encode(), "sha256")[:16].hex()


def ledger_slot(subject: str) -> int:
    """The hash slot of the ledgers of person token ``subject`` (that of all the person's keys)."""
    return int(key_slot(person_tag(subject).encode()))


def ledger_key(prefix: str, subject: str, ledger: str) -> str:
    """The Redis key of ledger id ``ledger`` of person token ``subject``: in the person's slot,
    without the token in its name (module docstring)."""
    return f"{prefix}:ledger:{{{slot_tag(ledger_slot(subject))}}}:{ledger}"


def ledger_expire_at(epoch: int, epoch_seconds: int, retention_seconds: int) -> int:
    """When the ledgers of ``epoch`` expire: its retention deadline (as its data keys and memos)."""
    return (epoch + 1) * epoch_seconds + retention_seconds


def chargeable_epochs(last: int, now: float, epoch_seconds: int, retention_seconds: int) -> list[int]:
    """Epochs up to ``last`` whose ledgers can still be charged at ``now`` (deadline not passed)."""
    first = max(0, int((now - retention_seconds) // epoch_seconds) - 1)
    return [e for e in range(first, last + 1) if ledger_expire_at(e, epoch_seconds, retention_seconds) > now]


# KEYS: ledger keys (one slot); ARGV[1] cap, ARGV[1 + i] expire_at of KEYS[i]. Raise to the cap, never lower.
_EXHAUST_LUA = r"""
local cap = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  if tonumber(redis.call('GET', k) or '0') < cap then redis.call('SET', k, cap, 'EXAT', ARGV[1 + i]) end
end
return #KEYS
"""


class LedgerExhauster:
    """Sets ledgers to the cap (the gateway's side; idempotent, so it is repeated on every mint
    while the erasure marker lives). One script per person's slot (one call on a single server;
    pipelined on a cluster)."""

    def __init__(self, client: RedisClient, prefix: str, key: bytes, *, budget_epsilon: float, epoch_seconds: int,
                 retention_seconds: int) -> None:
        self.prefix = check_prefix(prefix)
        self._client = client
        self.cluster = is_cluster(client)
        self._key = key
        self.budget_micro = round(budget_epsilon * MICRO)
        self.epoch_seconds = epoch_seconds
        self.retention_seconds = retention_seconds
        self._script = client.register_script(_EXHAUST_LUA)
        self.exhausted = 0  # ledgers set (or found) at the cap

    def exhaust(self, erased: Mapping[str, int], now: float) -> int:
        """For each ``token -> erasure epoch``: its ledger of every epoch up to that one still
        chargeable at ``now`` is raised to the cap, expiring at the epoch's deadline. Returns how many."""
        es, rs = self.epoch_seconds, self.retention_seconds
        calls: dict[int, tuple[list[str], list[int]]] = {}
        n = 0
        for token, epoch in erased.items():
            keys, args = calls.setdefault(ledger_slot(token) if self.cluster else 0, ([], [self.budget_micro]))
            for e in chargeable_epochs(epoch, now, es, rs):
                keys.append(ledger_key(self.prefix, token, ledger_id(self._key, token, e)))
                args.append(ledger_expire_at(e, es, rs))
                n += 1
        todo = [(keys, args) for keys, args in calls.values() if keys]
        if not todo:
            return 0
        try:
            eval_many(self._client, self._script, todo)
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"LDP ledger store unavailable ({type(exc).__name__})") from None
        self.exhausted += n
        return n

    def __repr__(self) -> str:
        return f"LedgerExhauster(prefix={self.prefix!r})"
