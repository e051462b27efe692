"""Redis adapters of the local-DP core (:mod:`stream.ldp`): the person's ε ledger.

Key layout (braces are hash tags, :mod:`stream.redisdb`)::

    <prefix>:ledger:{<tag>}:<id>   integer micro-epsilon spent,
                                   EXPIREAT = (epoch + 1) * epoch_seconds + retention_seconds
    id  = stream.ldp.ledger.ledger_id(K_ledger, token, epoch)
    tag = slot_tag(key_slot("{" + token + "}"))

The braces are a hash tag: the ledger lives in the slot of the person's other keys without naming
the token - ``tag`` is the shortest string that hashes to that slot, shared by some 1/16384 of all
people. Every ledger of one person is in one slot, whatever the epoch, so a batch is charged in one
EVAL per slot (one EVAL on a single server; pipelined on a cluster), atomic per ledger.
The shredder never deletes a ledger: an erasure does not refund.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stream.errors import KeyUnavailableError
from stream.ldp.ledger import MICRO, Charge, chargeable_epochs, ledger_expire_at, ledger_id
from stream.redisdb import (
    REDIS_ERRORS,
    RedisClient,
    check_prefix,
    eval_many,
    is_cluster,
    ledger_key,
    person_slot,
)

__all__ = ["LedgerExhauster", "RedisLedgerStore", "ledger_key", "ledger_slot"]


#: The hash slot of a person's ledgers (that of all the person's keys), and their names: built in
#: :mod:`stream.redisdb` like every key name.
ledger_slot = person_slot


# KEYS: ledger keys (one slot); ARGV[1] budget, ARGV[1 + i] "cost\texpire_at" of KEYS[i]. In order:
# charge if the ledger stays within the budget ('1'), else nothing ('0'). Monotone: a negative cost is
# an error. GET, INCRBY, EXPIREAT only: all the ledger's ACL selector grants (stream.storage.acl).
_CHARGE_LUA = r"""
local budget = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  if string.sub(ARGV[i], 1, 1) == '-' then return redis.error_reply('ERR a ledger never decreases') end
end
for i, k in ipairs(KEYS) do
  local cost, exp = string.match(ARGV[1 + i], '^([^\t]*)\t(.*)$')
  local spent = tonumber(redis.call('GET', k) or '0')
  if spent + tonumber(cost) > budget then
    out[i] = '0'
  else
    redis.call('INCRBY', k, cost)
    redis.call('EXPIREAT', k, exp)
    out[i] = '1'
  end
end
return table.concat(out, '')
"""


class RedisLedgerStore:
    """:class:`stream.ldp.ledger.LedgerStore` on Redis (one server or a cluster; one EVAL per slot of a batch)."""

    def __init__(self, client: RedisClient, prefix: str = "sg", *, chunk: int = 2000) -> None:
        self._client = client
        self.prefix = check_prefix(prefix)
        self.cluster = is_cluster(client)
        self._chunk = chunk
        self._script = client.register_script(_CHARGE_LUA)

    def ledger_key(self, subject: str, ledger: str) -> str:
        return ledger_key(self.prefix, subject, ledger)

    def charge(self, charges: Sequence[Charge], budget_micro: int) -> list[bool]:
        if not charges:
            return []
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(charges):
            groups.setdefault(ledger_slot(c.subject) if self.cluster else 0, []).append(i)
        calls: list[tuple[list[str], list[str | int]]] = []
        order: list[list[int]] = []
        for idx in groups.values():
            for start in range(0, len(idx), self._chunk):
                part = idx[start : start + self._chunk]
                keys = [self.ledger_key(charges[i].subject, charges[i].ledger) for i in part]
                args: list[str | int] = [budget_micro, *(f"{charges[i].cost_micro}\t{charges[i].expire_at}" for i in part)]
                calls.append((keys, args))
                order.append(part)
        out = [False] * len(charges)
        try:
            for part, raw in zip(order, eval_many(self._client, self._script, calls), strict=True):
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                for i, flag in zip(part, text, strict=True):
                    out[i] = flag == "1"
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"LDP ledger store unavailable ({type(exc).__name__})") from None
        return out

    def spent(self, subject: str, ledger: str) -> int:
        """Micro-epsilon spent on one ledger (tests, tools)."""
        try:
            raw = self._client.get(self.ledger_key(subject, ledger))
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"LDP ledger store unavailable ({type(exc).__name__})") from None
        return int(raw or 0)

    def __repr__(self) -> str:
        return f"RedisLedgerStore(prefix={self.prefix!r})"


# KEYS: ledger keys (one slot); ARGV[1] cap, ARGV[1 + i] expire_at of KEYS[i]. Raise to the cap, never lower
# (INCRBY by the difference: no SET, which the ledger's ACL selector does not grant).
_EXHAUST_LUA = r"""
local cap = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  local spent = tonumber(redis.call('GET', k) or '0')
  if spent < cap then
    redis.call('INCRBY', k, cap - spent)
    redis.call('EXPIREAT', k, ARGV[1 + i])
  end
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
