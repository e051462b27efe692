"""The shredder's Redis adapter (:class:`RedisShredStore`), on the layout of
:mod:`stream.redisdb` (names built there; braces are hash tags)::

    <prefix>:dek:{<subject>}:<epoch>        wrapped DEK (value "1.<key id>.<blob>")
    <prefix>:memo:{<subject>}:<epoch>       LDP memo hash
    <prefix>:budget:{<subject>}:<epoch>     old LDP budget hash (deleted if present)
    <prefix>:deadlines:{shard-NN}           zset member "<subject>:<epoch>", score = expire_at
    <prefix>:shredder:pending:{shard-NN}    hash: the receipt outbox of that shard (see stream.retention.core)
    <prefix>:erasure:<request_id>           string: the record of a processed erasure request (EX = retention)
    <prefix>:erasing:<request_id>           string: whom the request erases, written before anything is destroyed
    <prefix>:ptok:{<token>} / pid:{<L>}     the person's tk2 secret (stream.storage.pseudonyms): deleted by the erasure
    <prefix>:gone:{<token>}                 set first by the erasure (EX = retention): no data key is created for
                                            the token after it (stream.storage.keys)
    <prefix>:perased:{<L>}                  written with the pid's deletion: the erasure's epoch (stream.ldp.ledger),
                                            no token; in the slot of pid:{<L>}
    <prefix>:shredded                       pub/sub channel: "<subject>:<epoch>" or "<subject>:*"

One claim works in three steps, each within one hash slot (so it runs on one server and on
a Redis Cluster alike):

1. **read** the key ids of the due members' data keys (their persons' slots);
2. **claim** in the member's shard (deadline index and outbox share its slot), one script per
   shard: ZSCORE + ZREM make the claim exclusive (with several shredders exactly one wins a
   member) and the outbox entry (with the key id) is written in the same step;
3. **destroy** in the person's slot: DEL memo and budget, and the data key if it is still the
   claimed one (a key created after the claim is another key), and PUBLISH (one script).

Steps 1 and 3 are one script per slot (on a single server: one for the whole batch).

A crash between 2 and 3 leaves an outbox entry whose keys still exist: whoever finishes the
entry (:meth:`RedisShredStore.take_over`, the same instance after a restart or another one
after the lease) destroys them again before the receipt goes out. An erasure claims every
member of the person found in the shard or among the candidate epochs, deletes the tk2 secret
(the ``pid`` first - with the erased marker ``perased``, in one script in the pid's slot - then
its ``ptok`` index) and stores its record last; a repeated request
finds the record, an interrupted one is re-done (idempotent) and counts the keys from the
outbox.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from stream.errors import KeyUnavailableError
from stream.redisdb import (
    REDIS_ERRORS,
    RedisClient,
    budget_key,
    check_prefix,
    deadline_shard,
    deadlines_key,
    dek_key,
    erasing_key,
    erasure_floor_key,
    erasure_key,
    eval_many,
    gone_key,
    is_cluster,
    memo_key,
    pending_key,
    perased_key,
    person_slot,
    pid_key,
    ptok_key,
    shred_channel,
)
from stream.retention.core import ErasureConflictError, ErasureRecord, PendingShred
from stream.storage.keys import WAITAOF_TIMEOUT_MS, identity_probe

__all__ = ["RedisShredStore", "channel_name"]

log = logging.getLogger("streamgate.retention")


def channel_name(prefix: str) -> str:
    """The invalidation channel of ``prefix``."""
    return shred_channel(prefix)


# KEYS[1] deadline shard, KEYS[2] its outbox; ARGV[1] reason, ARGV[2] request id, ARGV[3] at, ARGV[4] worker,
# ARGV[5] lease_until, ARGV[6] "1" = only indexed members (retention), then (member, key id, alive) triples.
# Returns {field, entry, ...} of the members claimed.
_CLAIM = r"""
local reason, rid, at, worker, lease, indexed_only = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local out = {}
for i = 7, #ARGV, 3 do
  local m, key_id, alive = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local s, e = string.match(m, '^(.+):(%d+)$')
  local score = redis.call('ZSCORE', KEYS[1], m)
  if not s then
    if score then redis.call('ZREM', KEYS[1], m) end  -- not a "<subject>:<epoch>" member: dropped
  elseif score or (indexed_only == '0' and alive == '1') then
    local field = m .. '|' .. reason .. '|' .. rid .. '|' .. key_id
    local entry = cjson.encode({s, tonumber(e), key_id, reason, rid, at, score or '', worker, lease, worker})
    if redis.call('HSETNX', KEYS[2], field, entry) == 0 then entry = redis.call('HGET', KEYS[2], field) end
    if score then redis.call('ZREM', KEYS[1], m) end
    out[#out + 1] = field
    out[#out + 1] = entry
  end
end
return out
"""

# KEYS: (dek, memo, budget) per member, one slot. Returns (key id or "", 1 if any of them exists) per member.
_READ = r"""
local out = {}
for i = 1, #KEYS, 3 do
  local v = redis.call('GET', KEYS[i])
  local key_id = ''
  if v and string.sub(v, 1, 2) == '1.' and string.sub(v, 19, 19) == '.' then key_id = string.sub(v, 3, 18) end
  out[#out + 1] = key_id
  out[#out + 1] = (v and 1) or redis.call('EXISTS', KEYS[i + 1], KEYS[i + 2])
end
return out
"""

# KEYS: (dek, memo, budget) per member, one slot; ARGV[1] channel, then (claimed key id or "", member) per
# member. The data key goes only if it is still the claimed one; memo and budget always; then PUBLISH.
_DESTROY = r"""
for i = 1, #KEYS / 3 do
  local dek, key_id = KEYS[3 * i - 2], ARGV[2 * i]
  local v = redis.call('GET', dek)
  if v and key_id ~= '' and string.sub(v, 3, 18) == key_id then
    redis.call('DEL', dek, KEYS[3 * i - 1], KEYS[3 * i])
  else
    redis.call('DEL', KEYS[3 * i - 1], KEYS[3 * i])
  end
  redis.call('PUBLISH', ARGV[1], ARGV[2 * i + 1])
end
return 1
"""

# KEYS[1] pid:{L}, KEYS[2] perased:{L} (one slot: the lookup id's); ARGV[1] the erasure's epoch, ARGV[2] its
# expire_at ('' and '': no marker). Deletes the tk2 secret and leaves the erased marker (stream.ldp.ledger),
# never lowering it: the person's next token finds its ledgers exhausted.
_UNLINK = r"""
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '-1') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1], 'EXAT', ARGV[2])
end
return 1
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

    def __init__(self, client: RedisClient, prefix: str = "sg", *, scan_count: int = 1000, shards: int = 16) -> None:
        if shards <= 0:
            raise ValueError("shards must be > 0")
        self.client = client
        self.prefix = check_prefix(prefix)
        self.shards = int(shards)
        self.cluster = is_cluster(client)
        self.channel = channel_name(prefix)
        self.scan_count = scan_count
        self._read_ids = client.register_script(_READ)
        self._claim = client.register_script(_CLAIM)
        self._destroy = client.register_script(_DESTROY)
        self._unlink = client.register_script(_UNLINK)
        self._take_over = client.register_script(_TAKE_OVER)
        # the durability barrier before receipts (sync): the key-store probe's write, then WAITAOF
        self._durable = identity_probe(client, self.prefix, waitaof_timeout_ms=WAITAOF_TIMEOUT_MS)
        self._cursor = 0  # the shard a scan starts at (rotates: no shard waits behind the others)
        self._pending_in: dict[str, str] = {}  # outbox field -> the hash it was read from

    # -- names -------------------------------------------------------------------------
    def shard_of(self, subject: str) -> int:
        return deadline_shard(subject, self.shards)

    def deadlines_key(self, shard: int) -> str:
        return deadlines_key(self.prefix, shard)

    def pending_key(self, shard: int) -> str:
        return pending_key(self.prefix, shard)

    def key_names(self, subject: str, epoch: int | str) -> list[str]:
        """The data key, memo and budget of ``(subject, epoch)``."""
        return [name(self.prefix, subject, epoch) for name in (dek_key, memo_key, budget_key)]

    def erasure_key(self, request_id: str) -> str:
        return erasure_key(self.prefix, request_id)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"key store unavailable ({type(exc).__name__})") from None

    def _pipe(self, fill: Any) -> list[Any]:
        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            fill(pipe)
            return list(pipe.execute())
        result: list[Any] = self._call(run)
        return result

    # -- the three steps -----------------------------------------------------------------
    def _by_slot(self, items: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        """``(subject, epoch)`` items grouped per hash slot (one group on a single server)."""
        groups: dict[int, list[tuple[str, str]]] = {}
        for subject, epoch in items:
            slot = person_slot(subject) if self.cluster else 0
            groups.setdefault(slot, []).append((subject, epoch))
        return list(groups.values())

    def _read(self, members: Sequence[str]) -> dict[str, tuple[str, bool]]:
        """Step 1: per parsable member, (key id of its data key, whether dek/memo/budget exist)."""
        parsed = [m.rpartition(":") for m in members]
        items = [(s, e) for s, _, e in parsed if s and e.isdigit()]
        groups = self._by_slot(items)
        calls: list[tuple[list[str], list[str]]] = [([k for s, e in g for k in self.key_names(s, e)], []) for g in groups]
        out: dict[str, tuple[str, bool]] = {}
        for g, raw in zip(groups, self._call(eval_many, self.client, self._read_ids, calls), strict=True):
            for i, (subject, epoch) in enumerate(g):
                key_id = raw[2 * i]
                out[f"{subject}:{epoch}"] = (key_id.decode("ascii") if isinstance(key_id, bytes) else str(key_id),
                                             int(raw[2 * i + 1]) > 0)
        return out

    def _claim_in(self, shard_members: dict[int, list[str]], read: dict[str, tuple[str, bool]], *, reason: str,
                  request_id: str, at: float, worker: str, lease_until: float, indexed_only: bool) -> list[PendingShred]:
        """Step 2: one claim script per shard."""
        calls = []
        for shard, members in shard_members.items():
            args: list[Any] = [reason, request_id, repr(float(at)), worker, repr(float(lease_until)),
                               "1" if indexed_only else "0"]
            for m in members:
                key_id, alive = read.get(m, ("", False))
                args += [m, key_id, "1" if alive else "0"]
            calls.append(([self.deadlines_key(shard), self.pending_key(shard)], args))
        out = self._call(eval_many, self.client, self._claim, calls)
        entries: list[PendingShred] = []
        for (keys, _), raw in zip(calls, out, strict=True):
            for i in range(0, len(raw), 2):
                entry = _entry(raw[i], raw[i + 1])
                self._pending_in[entry.field] = keys[1]
                entries.append(entry)
        return entries

    def _destroy_all(self, entries: Sequence[PendingShred]) -> None:
        """Step 3: destroy the claimed keys and announce them (one script per person slot)."""
        if not entries:
            return
        by_ref = {(e.subject, str(e.epoch)): e.key_id or "" for e in entries}
        calls = []
        for g in self._by_slot(list(by_ref)):
            args: list[str] = [self.channel]
            for subject, epoch in g:
                args += [by_ref[(subject, epoch)], f"{subject}:{epoch}"]
            calls.append(([k for s, e in g for k in self.key_names(s, e)], args))
        self._call(eval_many, self.client, self._destroy, calls)

    # -- the port ------------------------------------------------------------------------
    def claim_due(self, now: float, limit: int, *, at: float, worker: str, lease_until: float) -> list[PendingShred]:
        """Claim and destroy up to ``limit`` members due at ``now``, from every shard. Fewer than ``limit``
        only when fewer are due: members another shredder won between the read and the claim are made up
        for by reading again."""
        entries: list[PendingShred] = []
        live = [(self._cursor + i) % self.shards for i in range(self.shards)]  # shards that may hold more
        self._cursor = (self._cursor + 1) % self.shards
        while len(entries) < limit and live:
            want = int(limit) - len(entries)
            due, live = self._due(now, want, live)
            if not due:
                break
            read = self._read([m for ms in due.values() for m in ms])
            got = self._claim_in(due, read, reason="retention", request_id="", at=at, worker=worker,
                                 lease_until=lease_until, indexed_only=True)
            self._destroy_all(got)
            entries += got
        return entries

    def _due(self, now: float, limit: int, shards: list[int]) -> tuple[dict[int, list[str]], list[int]]:
        """Up to ``limit`` due members of ``shards`` (one pipelined read), and the shards that may hold more.
        Each shard is asked for its share of ``limit`` and a quarter more (asking each for ``limit`` read
        16 times what a batch takes); a shard that gave less than it was asked holds no more."""
        per = -(-int(limit) * 5 // (4 * len(shards)))

        def fill(pipe: Any) -> None:
            for shard in shards:
                pipe.zrangebyscore(self.deadlines_key(shard), "-inf", int(now), start=0, num=per)

        due: dict[int, list[str]] = {}
        more: list[int] = []
        left = int(limit)
        for shard, members in zip(shards, self._pipe(fill), strict=True):
            if len(members) >= per:
                more.append(shard)
            take = [m.decode("ascii", "replace") if isinstance(m, bytes) else str(m) for m in members[:max(0, left)]]
            if take:
                due[shard] = take
                left -= len(take)
        return due, more

    def subject_members(self, subject: str) -> list[str]:
        """Deadline-index members of ``subject`` in its shard (ZSCAN MATCH; token characters are no glob characters)."""
        key = self.deadlines_key(self.shard_of(subject))

        def scan() -> list[str]:
            return [(m.decode("ascii") if isinstance(m, bytes) else str(m))
                    for m, _ in self.client.zscan_iter(key, match=f"{subject}:*", count=self.scan_count)]
        members: list[str] = self._call(scan)
        return [m for m in members if m.rpartition(":")[0] == subject]

    def erase_subject(self, subject: str, epochs: Sequence[int], *, request_id: str, at: float, worker: str,
                      lease_until: float, record_ttl: int, digest: str = "",
                      erased: tuple[int, int] | None = None) -> tuple[ErasureRecord, bool]:
        record_key = self.erasure_key(request_id)
        existing = self._call(self.client.get, record_key)
        if existing is not None:
            return ErasureRecord.decode(existing), False
        subject = self._begin(request_id, subject, digest, record_ttl)
        # first the marker: from here on no data key is created for the token (a gateway's batch tokenized
        # before the erasure is refused and protected again under the person's next token), so the keys
        # read below are all there will be
        self._call(self.client.set, gone_key(self.prefix, subject), b"1", ex=int(record_ttl))
        members = sorted(set(self.subject_members(subject)) | {f"{subject}:{e}" for e in epochs})
        shard = self.shard_of(subject)
        ptok = ptok_key(self.prefix, subject)
        lookup = self._call(self.client.get, ptok)
        entries = self._claim_in({shard: members}, self._read(members), reason="erasure", request_id=request_id,
                                 at=at, worker=worker, lease_until=lease_until, indexed_only=False)
        self._destroy_all(entries)
        # the person's tk2 secret: without it nobody can recompute the token from the user_id; the erased
        # marker is written in the same script, in the pid's slot
        if lookup is not None:
            lookup_id = bytes(lookup).decode("ascii")
            mark = [int(erased[0]), int(erased[1])] if erased is not None else ["", ""]
            self._call(self._unlink, keys=[pid_key(self.prefix, lookup_id), perased_key(self.prefix, lookup_id)],
                       args=mark)
        self._call(self.client.delete, ptok)
        # every key of this request claimed so far (an interrupted earlier attempt included)
        fields = self._call(lambda: list(self.client.hscan_iter(
            self.pending_key(shard), match=f"{subject}:*|erasure|{request_id}|?*", count=self.scan_count)))
        record = ErasureRecord(subject, float(at), len(fields), worker, digest).encode()
        if not self._call(self.client.set, record_key, record, nx=True, ex=int(record_ttl)):
            return ErasureRecord.decode(self._call(self.client.get, record_key)), False
        self.publish(f"{subject}:*")
        return ErasureRecord.decode(record), True

    def _begin(self, request_id: str, subject: str, digest: str, record_ttl: int) -> str:
        """Whom request ``request_id`` erases: ``subject``, written before anything is destroyed; or, for a
        request begun before and interrupted (a crash after the person's tk2 secret was deleted, so that a
        redelivery by user_id no longer finds their token), the person it began with."""
        key = erasing_key(self.prefix, request_id)
        mine = orjson.dumps({"subject": subject, "digest": digest})

        def begin(pipe: Any) -> None:
            pipe.set(key, mine, nx=True, ex=int(record_ttl))
            pipe.get(key)

        begun = orjson.loads(self._pipe(begin)[-1])
        if digest and begun.get("digest") and begun["digest"] != digest:
            raise ErasureConflictError("request_id was already used for another person's erasure")
        return str(begun["subject"])

    def sync(self) -> None:
        """WAITAOF after a write of ours on every master (the key-store probe): once it is fsynced, so is every
        earlier delete. A Redis without AOF or WAITAOF (before 7.2) has nothing to wait for."""
        if self._durable.probe(True).durable is False:
            raise KeyUnavailableError("the key store did not confirm the shredder's deletes on disk in time: "
                                      "receipts held")

    def erasure_floor(self, now: float) -> float:
        """Since when this store has kept erasure records (``<prefix>:erasure-floor``, SET NX ``now``)."""
        key = erasure_floor_key(self.prefix)

        def fill(pipe: Any) -> None:
            pipe.set(key, repr(float(now)), nx=True)
            pipe.get(key)

        return float(self._pipe(fill)[-1])

    def has_keys(self, subject: str, epochs: Sequence[int]) -> bool:
        """Whether any DEK of ``subject`` exists among ``epochs`` (one EXISTS: one slot)."""
        names = [self.key_names(subject, e)[0] for e in epochs]
        return bool(names) and int(self._call(self.client.exists, *names)) > 0

    def pending(self) -> list[PendingShred]:
        keys = [self.pending_key(shard) for shard in range(self.shards)]
        entries: list[PendingShred] = []
        for key, content in zip(keys, self._pipe(lambda pipe: [pipe.hgetall(k) for k in keys]), strict=True):
            for k, v in content.items():
                try:
                    entry = _entry(k, v)
                except (ValueError, TypeError):  # never written by streamgate: skip, don't block the outbox
                    log.warning("unreadable shredder outbox entry skipped")
                    continue
                self._pending_in[entry.field] = key
                entries.append(entry)
        return sorted(entries, key=lambda e: e.field)

    def _hash_of(self, entry: PendingShred) -> str:
        return self._pending_in.get(entry.field) or self.pending_key(self.shard_of(entry.subject))

    def take_over(self, entry: PendingShred, *, worker: str, lease_until: float) -> PendingShred | None:
        """Re-lease ``entry`` to ``worker`` (compare-and-set) and destroy its keys again (a crash may have
        come between the claim and the destruction)."""
        key = self._hash_of(entry)
        old = self._call(self.client.hget, key, entry.field)
        if old is None:
            return None
        new = dataclasses.replace(_entry(entry.field, old), lease_until=lease_until, owner=worker)
        ok = self._call(self._take_over, keys=[key], args=[entry.field, old, new.encode()])
        if not ok:
            return None
        self._destroy_all([new])
        return new

    def done(self, entries: Sequence[PendingShred]) -> None:
        by_hash: dict[str, list[str]] = {}
        for e in entries:
            by_hash.setdefault(self._hash_of(e), []).append(e.field)
        if by_hash:
            self._pipe(lambda pipe: [pipe.hdel(k, *fields) for k, fields in by_hash.items()])
            for fields in by_hash.values():
                for f in fields:
                    self._pending_in.pop(f, None)

    def publish(self, message: str) -> None:
        self._call(self.client.publish, self.channel, message)

    def due_count(self, now: float) -> int:
        """Members of the deadline index due at ``now`` (the backlog; for metrics and tests)."""
        keys = [self.deadlines_key(shard) for shard in range(self.shards)]
        return sum(int(n) for n in self._pipe(lambda pipe: [pipe.zcount(k, "-inf", int(now)) for k in keys]))

    def oldest_deadline(self) -> int | None:
        """The smallest deadline in the index (None if empty)."""
        keys = [self.deadlines_key(shard) for shard in range(self.shards)]
        firsts = self._pipe(lambda pipe: [pipe.zrange(k, 0, 0, withscores=True) for k in keys])
        scores = [int(f[0][1]) for f in firsts if f]
        return min(scores) if scores else None

    def index_size(self) -> int:
        """Members in the whole deadline index."""
        keys = [self.deadlines_key(shard) for shard in range(self.shards)]
        return sum(int(n) for n in self._pipe(lambda pipe: [pipe.zcard(k) for k in keys]))

    def pending_count(self) -> int:
        keys = [self.pending_key(shard) for shard in range(self.shards)]
        return sum(int(n) for n in self._pipe(lambda pipe: [pipe.hlen(k) for k in keys]))

    def __repr__(self) -> str:
        return f"RedisShredStore(prefix={self.prefix!r}, shards={self.shards})"
