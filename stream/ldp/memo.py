"""Memoized permanent randomized responses and the per-person privacy budget.

Longitudinal privacy (the scheme streamgate uses, and why)
-----------------------------------------------------------
A person who reports the same value again must not leak more. streamgate
memoizes one *permanent* randomized response per (person token, retention
epoch, attribute, true value) - RAPPOR's permanent randomized response
(Erlingsson et al., CCS 2014) without the instantaneous round. Every later
report of that value by that person is the identical memoized response, so
any number of repeats reveals exactly what one report does: epsilon of that
attribute. (A second, instantaneous round - RAPPOR's IRR or L-GRR/L-OSUE of
Arcolezi et al. 2022 - would make repeats look different at the cost of a
larger variance for the same longitudinal epsilon; we chose plain
memoization for its exact, simple guarantee and document that identical
reports can be linked to each other, never to the person.)

Budget: sequential composition per person, per attribute, per retention
epoch. Creating a memo for a value not reported before in this epoch spends
that attribute's epsilon; replaying a memo spends nothing. When a new memo
would take the person past ``budget_epsilon`` for the attribute, the report
of that attribute is suppressed (counted, never emitted with extra epsilon).
Budgets are kept in integer micro-epsilon so sums are exact.

Redis layout (the shredder deletes both with the person's keys)::

    {prefix}:memo:{subject}:{epoch}    hash  field "{attribute}:{tag}" -> the report (JSON)
    {prefix}:budget:{subject}:{epoch}  hash  field "{attribute}"       -> micro-epsilon spent
    {prefix}:deadlines                 zset  member "{subject}:{epoch}" (ZADD NX, as the gateway)

Both hashes expire at the epoch's retention deadline, like the data key.
The script derives the hash names from the prefix and ``subject:epoch`` (one
packed argument per request keeps the client-side encoding cheap), so it
targets a single Redis (or a primary with replicas), not Redis Cluster.
``tag`` is an HMAC (key derived from the keyring, purpose ``ldp-memo``) of
the attribute, its mechanism parameters and the true value, so Redis never
holds a true value: a memo field cannot be reversed by a dictionary attack
without the key. One batch is resolved in one EVAL (atomic: two workers
racing on a new value agree on one response and charge the budget once).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import redis

from stream.errors import KeyUnavailableError

__all__ = [
    "MICRO",
    "MemoCache",
    "MemoRequest",
    "MemoResult",
    "MemoStore",
    "MemoryMemoStore",
    "RedisMemoStore",
]

#: Budgets are stored in integer micro-epsilon.
MICRO = 1_000_000


class MemoRequest(NamedTuple):
    """Resolve the memo of one (subject, epoch, field); ``candidate`` is a fresh randomized response
    used only if no memo exists yet (and the budget allows it)."""

    subject: str
    epoch: int
    expire_at: int
    field: str
    attribute: str
    cost_micro: int
    candidate: str


Status = Literal["memo", "new", "suppressed"]


class MemoResult(NamedTuple):
    status: Status
    report: str | None


class MemoStore(Protocol):
    def resolve(self, requests: Sequence[MemoRequest], budget_micro: int) -> list[MemoResult]:
        """Per request, in order: the existing memo (``memo``), else the candidate stored as the new
        memo with its cost charged (``new``), else ``suppressed`` when the budget would be exceeded.
        Raises :class:`KeyUnavailableError` when the store is unreachable (nothing is emitted)."""
        ...


_RESOLVE_LUA = r"""
local prefix = ARGV[1]
local budget = tonumber(ARGV[2])
local out = {}
local dated = {}
for i = 3, #ARGV do
  -- one packed argument per request: subject:epoch, field, attribute, cost, expire_at, candidate
  -- (reports are JSON without newlines: the answer is one newline-joined string)
  local ref, field, attr, cost, exp, cand = string.match(ARGV[i], '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  local mk = prefix .. ':memo:' .. ref
  local bk = prefix .. ':budget:' .. ref
  local memo = redis.call('HGET', mk, field)
  if memo then
    out[#out + 1] = 'M' .. memo
  else
    local spent = tonumber(redis.call('HGET', bk, attr) or '0')
    if spent + tonumber(cost) > budget then
      out[#out + 1] = 'S'
    else
      redis.call('HSET', mk, field, cand)
      redis.call('HINCRBY', bk, attr, cost)
      if not dated[ref] then
        redis.call('EXPIREAT', mk, exp)
        redis.call('EXPIREAT', bk, exp)
        redis.call('ZADD', KEYS[1], 'NX', exp, ref)
        dated[ref] = true
      end
      out[#out + 1] = 'N' .. cand
    end
  end
end
return table.concat(out, '\n')
"""


def _results(raw: Sequence[bytes | str]) -> list[MemoResult]:
    out: list[MemoResult] = []
    for item in raw:
        text = item.decode() if isinstance(item, bytes) else item
        tag, body = text[:1], text[1:]
        if tag == "M":
            out.append(MemoResult("memo", body))
        elif tag == "N":
            out.append(MemoResult("new", body))
        else:
            out.append(MemoResult("suppressed", None))
    return out


class RedisMemoStore:
    """:class:`MemoStore` on Redis (single instance or primary; all keys of a batch in one EVAL)."""

    def __init__(self, client: redis.Redis, prefix: str = "sg", *, chunk: int = 2000) -> None:
        if not prefix or ":" in prefix:
            raise ValueError("prefix must be non-empty and contain no ':'")
        self._client = client
        self.prefix = prefix
        self.deadlines_key = f"{prefix}:deadlines"
        self._chunk = chunk
        self._script = client.register_script(_RESOLVE_LUA)

    def memo_key(self, subject: str, epoch: int) -> str:
        return f"{self.prefix}:memo:{subject}:{epoch}"

    def budget_key(self, subject: str, epoch: int) -> str:
        return f"{self.prefix}:budget:{subject}:{epoch}"

    def resolve(self, requests: Sequence[MemoRequest], budget_micro: int) -> list[MemoResult]:
        out: list[MemoResult] = []
        try:
            for start in range(0, len(requests), self._chunk):
                part = requests[start : start + self._chunk]
                args: list[str | int] = [self.prefix, budget_micro]
                args += [
                    f"{r.subject}:{r.epoch}\t{r.field}\t{r.attribute}\t{r.cost_micro}\t{r.expire_at}\t{r.candidate}"
                    for r in part
                ]
                raw = self._script(keys=[self.deadlines_key], args=args)
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                out.extend(_results(text.split("\n") if part else []))
        except (redis.RedisError, OSError) as exc:
            raise KeyUnavailableError(f"LDP memo store unavailable ({type(exc).__name__})") from None
        return out

    def __repr__(self) -> str:
        return f"RedisMemoStore(prefix={self.prefix!r})"


class MemoryMemoStore:
    """In-memory :class:`MemoStore` with the same semantics (expiry by an injected clock), for unit tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.memos: dict[tuple[str, int], dict[str, str]] = {}
        self.budgets: dict[tuple[str, int], dict[str, int]] = {}
        self.expiry: dict[tuple[str, int], int] = {}
        self.deadlines: dict[str, int] = {}

    def _expire(self, ref: tuple[str, int]) -> None:
        exp = self.expiry.get(ref)
        if exp is not None and self._clock() >= exp:
            self.memos.pop(ref, None)
            self.budgets.pop(ref, None)
            self.expiry.pop(ref, None)

    def resolve(self, requests: Sequence[MemoRequest], budget_micro: int) -> list[MemoResult]:
        out: list[MemoResult] = []
        for r in requests:
            ref = (r.subject, r.epoch)
            self._expire(ref)
            memo = self.memos.get(ref, {}).get(r.field)
            if memo is not None:
                out.append(MemoResult("memo", memo))
                continue
            spent = self.budgets.get(ref, {}).get(r.attribute, 0)
            if spent + r.cost_micro > budget_micro:
                out.append(MemoResult("suppressed", None))
                continue
            self.memos.setdefault(ref, {})[r.field] = r.candidate
            self.budgets.setdefault(ref, {})[r.attribute] = spent + r.cost_micro
            self.expiry[ref] = r.expire_at
            self.deadlines.setdefault(f"{r.subject}:{r.epoch}", r.expire_at)
            out.append(MemoResult("new", r.candidate))
        return out

    def delete(self, subject: str, epoch: int | None = None) -> None:
        """Shred: drop the memos and budgets of one (subject, epoch), or of every epoch of a subject."""
        for ref in [k for k in self.memos.keys() | self.budgets.keys() if k[0] == subject]:
            if epoch is None or ref[1] == epoch:
                self.memos.pop(ref, None)
                self.budgets.pop(ref, None)
                self.expiry.pop(ref, None)


class MemoCache:
    """Process-local cache of resolved memos, keyed by (subject, epoch, attribute, true value).

    It holds true values only in process memory (like the events themselves). Entries are
    trusted for ``max_staleness_seconds`` (the same bound as the data-key cache); after that the
    memo is resolved against the store again, so a shred is honoured within that bound - sooner
    when a shred notification calls :meth:`invalidate`. Bounded: beyond ``max_entries`` the
    oldest inserted entries go first. ``data`` maps a key to ``(report, fetched_at)``; readers
    on the hot path may look it up directly (dict reads are atomic; writers take the lock).
    """

    def __init__(self, *, max_entries: int, max_staleness_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_staleness_seconds = max_staleness_seconds
        self._clock = clock
        self.data: dict[tuple[str, int, str, object], tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, str, object], now: float) -> Any:
        entry = self.data.get(key)
        if entry is None or not 0 <= now - entry[1] < self.max_staleness_seconds:
            return None
        return entry[0]

    def put(self, key: tuple[str, int, str, object], report: Any, now: float) -> None:
        with self._lock:
            data = self.data
            data.pop(key, None)
            data[key] = (report, now)
            if len(data) > self.max_entries:
                for old in list(itertools.islice(iter(data), len(data) - self.max_entries)):
                    del data[old]

    def invalidate(self, subject: str | None = None, epoch: int | None = None) -> None:
        """Forget everything, or one subject's memos (all epochs, or one)."""
        with self._lock:
            if subject is None:
                self.data.clear()
                return
            for key in [k for k in self.data if k[0] == subject and (epoch is None or k[1] == epoch)]:
                del self.data[key]

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return len(self.data)
