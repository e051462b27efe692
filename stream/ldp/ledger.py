"""The person's ε ledger in one place: its id, its Redis key, its expiry, and exhausting it.

Used by the privatizer (which charges it, :mod:`stream.ldp.memo`) and by the gateway (which
exhausts the ledgers of a person who returns after an erasure)::

    id  = hex(HMAC-SHA256(K_ledger, utf8(token) || 0x00 || ascii(epoch))[:16])   K_ledger = derive("ldp-ledger")
    {prefix}:ledger:{id}   integer micro-epsilon spent, EXPIREAT = (epoch + 1) * epoch_seconds + retention_seconds

A person seen again after an erasure has a new tk2 token, hence new ledger ids. The shredder
leaves ``{prefix}:perased:{lookup id}`` = the erasure's epoch (:mod:`stream.crypto.tokens`);
the gateway's mint reports it and :class:`LedgerExhauster` sets the new token's ledger of every
epoch up to that one that can still be charged to the cap, so the erasure refunds nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

import redis

from stream.errors import KeyUnavailableError

__all__ = ["LEDGER_PURPOSE", "MICRO", "LedgerExhauster", "chargeable_epochs", "ledger_expire_at", "ledger_id",
           "ledger_key"]

#: Ledgers are kept in integer micro-epsilon.
MICRO = 1_000_000
#: Keyring purpose of the ledger-id key.
LEDGER_PURPOSE = "ldp-ledger"


def ledger_id(key: bytes, subject: str, epoch: int) -> str:
    """The ledger id of (person token, epoch): no identifier in it."""
    return hmac.digest(key, subject.encode() + b"\x00" + str(epoch).encode(), "sha256")[:16].hex()


def ledger_key(prefix: str, ledger: str) -> str:
    """The Redis key of ledger id ``ledger``."""
    return f"{prefix}:ledger:{ledger}"


def ledger_expire_at(epoch: int, epoch_seconds: int, retention_seconds: int) -> int:
    """When the ledgers of ``epoch`` expire: its retention deadline (as its data keys and memos)."""
    return (epoch + 1) * epoch_seconds + retention_seconds


def chargeable_epochs(last: int, now: float, epoch_seconds: int, retention_seconds: int) -> list[int]:
    """Epochs up to ``last`` whose ledgers can still be charged at ``now`` (deadline not passed)."""
    first = max(0, int((now - retention_seconds) // epoch_seconds) - 1)
    return [e for e in range(first, last + 1) if ledger_expire_at(e, epoch_seconds, retention_seconds) > now]


# KEYS: ledger keys; ARGV[1] cap, ARGV[1 + i] expire_at of KEYS[i]. Raise to the cap, never lower.
_EXHAUST_LUA = r"""
local cap = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  if tonumber(redis.call('GET', k) or '0') < cap then redis.call('SET', k, cap, 'EXAT', ARGV[1 + i]) end
end
return #KEYS
"""


class LedgerExhauster:
    """Sets ledgers to the cap (the gateway's side; idempotent, so it is repeated on every mint
    while the erasure marker lives)."""

    def __init__(self, client: redis.Redis, prefix: str, key: bytes, *, budget_epsilon: float, epoch_seconds: int,
                 retention_seconds: int) -> None:
        self.prefix = prefix
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
        keys: list[str] = []
        args: list[int] = [self.budget_micro]
        for token, epoch in erased.items():
            for e in chargeable_epochs(epoch, now, es, rs):
                keys.append(ledger_key(self.prefix, ledger_id(self._key, token, e)))
                args.append(ledger_expire_at(e, es, rs))
        if not keys:
            return 0
        try:
            self._script(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            raise KeyUnavailableError(f"LDP ledger store unavailable ({type(exc).__name__})") from None
        self.exhausted += len(keys)
        return len(keys)

    def __repr__(self) -> str:
        return f"LedgerExhauster(prefix={self.prefix!r})"
