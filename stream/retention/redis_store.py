"""The shredder's Redis adapter (:class:`RedisShredStore`), on the layout of
:mod:`stream.crypto.deks` and :mod:`stream.ldp.memo`::

    {prefix}:dek:{subject}:{epoch}        wrapped DEK (value "1.<key id>.<blob>")
    {prefix}:memo:{subject}:{epoch}       LDP memo hash
    {prefix}:budget:{subject}:{epoch}     LDP budget hash
    {prefix}:deadlines                    zset member "{subject}:{epoch}", score = expire_at
    {prefix}:shredder:pending             hash: the receipt outbox (see stream.retention.core)
    {prefix}:erasure:{request_id}         string: the record of a processed erasure request (EX = retention)
    {prefix}:ptok:{token} / pid:{lookup}  the person's tk2 secret (stream.crypto.tokens): deleted by the erasure
    {prefix}:perased:{lookup}             written by that erasure: its epoch (stream.ldp.ledger), no token
    {prefix}:shredded                     pub/sub channel: "{subject}:{epoch}" or "{subject}:*"

Claim-and-destroy runs as one Lua script per batch (atomic: one winner per member
with several shredders). The scripts build key names from the prefix, so they need
a non-cluster Redis (or one hash slot), like the rest of streamgate's layout.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import redis

from stream.errors import KeyUnavailableError
from stream.retention.core import ErasureRecord, PendingShred

__all__ = ["RedisShredStore", "channel_name"]

log = logging.getLogger("streamgate.retention")


def channel_name(prefix: str) -> str:
    """The invalidation channel of ``prefix``."""
    return f"{prefix}:shredded"


# KEYS[1] deadlines, KEYS[2] pending; ARGV[1] prefix, ARGV[2] channel, ARGV[3] at, ARGV[4] worker,
# ARGV[5] lease_until. claim(member, reason, rid) -> {field, entry} or nil
_CLAIM_FN = r"""
local prefix, channel, at, worker, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local function claim(m, reason, rid)
  local s, e = string.match(m, '^(.+):(%d+)$')
  if not s then return nil end  -- not a "{subject}:{epoch}" member: dropped from the index by the caller
  local dek = prefix .. ':dek:' .. m
  local memo = prefix .. ':memo:' .. m
  local budget = prefix .. ':budget:' .. m
  local score = redis.call('ZSCORE', KEYS[1], m)
  local v = redis.call('GET', dek)
  local others = redis.call('EXISTS', memo, budget)
  if (not score) and (not v) and others == 0 then return nil end
  local key_id = ''
  if v and string.sub(v, 1, 2) == '1.' and string.sub(v, 19, 19) == '.' then key_id = string.sub(v, 3, 18) end
  local field = m .. '|' .. reason .. '|' .. rid .. '|' .. key_id
  local entry = cjson.encode({s, tonumber(e), key_id, reason, rid, at, score or '', worker, lease, worker})
  redis.call('HSETNX', KEYS[2], field, entry)
  redis.call('DEL', dek, memo, budget)
  if score then redis.call('ZREM', KEYS[1], m) end
  redis.call('PUBLISH', channel, m)
  return {field, redis.call('HGET', KEYS[2], field)}
end
"""

# ARGV[6] now, ARGV[7] limit
_CLAIM_DUE = _CLAIM_FN + r"""
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[6], 'LIMIT', 0, tonumber(ARGV[7]))
local out = {}
for _, m in ipairs(members) do
  local r = claim(m, 'retention', '')
  if r then out[#out + 1] = r[1]; out[#out + 1] = r[2]
  else redis.call('ZREM', KEYS[1], m) end
end
return out
"""

# KEYS[3] erasure record; ARGV[6] request_id, ARGV[7] subject, ARGV[8] record ttl, ARGV[9] request digest,
# ARGV[10] erased marker's epoch, ARGV[11] its expire_at ('' and '': none), ARGV[12..] members
_ERASE = _CLAIM_FN + r"""
local existing = redis.call('GET', KEYS[3])
if existing then return {0, existing} end
local n = 0
for i = 12, #ARGV do
  local r = claim(ARGV[i], 'erasure', ARGV[6])
  if r and string.find(r[1], '|', 1, true) and not string.match(r[1], '|$') then n = n + 1 end
end
-- the person's tk2 secret: without it nobody can recompute the token from the user_id
local ptok = prefix .. ':ptok:' .. ARGV[7]
local lookup = redis.call('GET', ptok)
if lookup then
  redis.call('DEL', prefix .. ':pid:' .. lookup)
  -- the erased marker (stream.ldp.ledger): the person's next token finds its ledgers exhausted
  if ARGV[10] ~= '' then
    local mark = prefix .. ':perased:' .. lookup
    if tonumber(redis.call('GET', mark) or '-1') < tonumber(ARGV[10]) then
      redis.call('SET', mark, ARGV[10], 'EXAT', ARGV[11])
    end
  end
end
redis.call('DEL', ptok)
local record = cjson.encode({subject = ARGV[7], at = tonumber(at), keys_shredded = n, worker = worker,
                             digest = ARGV[9]})
redis.call('SET', KEYS[3], record, 'EX', tonumber(ARGV[8]))
redis.call('PUBLISH', channel, ARGV[7] .. ':*')
return {1, record}
"""

_TAKE_OVER = r"""
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]); return 1
end
return 0
"""


def _entry(field: bytes | str, raw: bytes | str) -> PendingShred:
    name = field.decode("ascii") if isinstance(field, bytes) else field
    return PendingShred.decode(name, raw)


class RedisShredStore:
    """:class:`stream.retention.core.ShredStore` on Redis (module docstring). Errors: :class:`KeyUnavailableError`."""

    def __init__(self, client: redis.Redis, prefix: str = "sg", *, scan_count: int = 1000) -> None:
        if not prefix or ":" in prefix:
            raise ValueError("prefix must be non-empty and contain no ':'")
        self.client = client
        self.prefix = prefix
        self.deadlines_key = f"{prefix}:deadlines"
        self.pending_key = f"{prefix}:shredder:pending"
        self.channel = channel_name(prefix)
        self.scan_count = scan_count
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._erase = client.register_script(_ERASE)
        self._take_over = client.register_script(_TAKE_OVER)

    def erasure_key(self, request_id: str) -> str:
        return f"{self.prefix}:erasure:{request_id}"

    def _base_args(self, at: float, worker: str, lease_until: float) -> list[Any]:
        return [self.prefix, self.channel, repr(float(at)), worker, repr(float(lease_until))]

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise KeyUnavailableError(f"key store unavailable ({type(exc).__name__})") from None

    def claim_due(self, now: float, limit: int, *, at: float, worker: str, lease_until: float) -> list[PendingShred]:
        out = self._call(self._claim_due, keys=[self.deadlines_key, self.pending_key],
                         args=[*self._base_args(at, worker, lease_until), int(now), int(limit)])
        return [_entry(out[i], out[i + 1]) for i in range(0, len(out), 2)]

    def subject_members(self, subject: str) -> list[str]:
        """Deadline-index members of ``subject`` (ZSCAN MATCH; token characters are no glob characters)."""
        def scan() -> list[str]:
            return [(m.decode("ascii") if isinstance(m, bytes) else str(m))
                    for m, _ in self.client.zscan_iter(self.deadlines_key, match=f"{subject}:*",
                                                       count=self.scan_count)]
        members: list[str] = self._call(scan)
        return [m for m in members if m.rpartition(":")[0] == subject]

    def erase_subject(self, subject: str, epochs: Sequence[int], *, request_id: str, at: float, worker: str,
                      lease_until: float, record_ttl: int, digest: str = "",
                      erased: tuple[int, int] | None = None) -> tuple[ErasureRecord, bool]:
        members = sorted(set(self.subject_members(subject)) | {f"{subject}:{e}" for e in epochs})
        mark = [int(erased[0]), int(erased[1])] if erased is not None else ["", ""]
        created, raw = self._call(
            self._erase, keys=[self.deadlines_key, self.pending_key, self.erasure_key(request_id)],
            args=[*self._base_args(at, worker, lease_until), request_id, subject, int(record_ttl), digest, *mark,
                  *members])
        return ErasureRecord.decode(raw), bool(created)

    def has_keys(self, subject: str, epochs: Sequence[int]) -> bool:
        """Whether any DEK of ``subject`` exists among ``epochs`` (one EXISTS)."""
        names = [f"{self.prefix}:dek:{subject}:{e}" for e in epochs]
        return bool(names) and int(self._call(self.client.exists, *names)) > 0

    def pending(self) -> list[PendingShred]:
        def scan() -> list[tuple[Any, Any]]:
            return list(self.client.hscan_iter(self.pending_key, count=self.scan_count))
        entries: list[PendingShred] = []
        for k, v in self._call(scan):
            try:
                entries.append(_entry(k, v))
            except (ValueError, TypeError):  # never written by streamgate: skip, don't block the outbox
                log.warning("unreadable shredder outbox entry skipped")
        return sorted(entries, key=lambda e: e.field)

    def take_over(self, entry: PendingShred, *, worker: str, lease_until: float) -> PendingShred | None:
        old = self._call(self.client.hget, self.pending_key, entry.field)
        if old is None:
            return None
        new = dataclasses.replace(_entry(entry.field, old), lease_until=lease_until, owner=worker)
        ok = self._call(self._take_over, keys=[self.pending_key], args=[entry.field, old, new.encode()])
        return new if ok else None

    def done(self, entries: Sequence[PendingShred]) -> None:
        if entries:
            self._call(self.client.hdel, self.pending_key, *[e.field for e in entries])

    def publish(self, message: str) -> None:
        self._call(self.client.publish, self.channel, message)

    def due_count(self, now: float) -> int:
        """Members of the deadline index due at ``now`` (the backlog; for metrics and tests)."""
        return int(self._call(self.client.zcount, self.deadlines_key, "-inf", int(now)))

    def oldest_deadline(self) -> int | None:
        """The smallest deadline in the index (None if empty)."""
        first = self._call(self.client.zrange, self.deadlines_key, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def pending_count(self) -> int:
        return int(self._call(self.client.hlen, self.pending_key))

    def __repr__(self) -> str:
        return f"RedisShredStore(prefix={self.prefix!r})"
