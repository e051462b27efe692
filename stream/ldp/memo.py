"""Memoized permanent responses and the person-level privacy ledger.

Longitudinal privacy (two rounds, see :mod:`stream.ldp.longitudinal`)
-------------------------------------------------------------------
streamgate memoizes one *permanent* randomized response (at the attribute's
``eps_inf``) per (person token, retention epoch, attribute, true value); every
report then randomizes that memo afresh at ``eps_1`` (RAPPOR's PRR + IRR; L-GRR /
L-OSUE of Arcolezi et al. 2022). All reports of one value are post-processing
of its memo, so together they reveal at most ``eps_inf``; one report reveals at
most ``eps_1``; and no two reports of a person are identical by construction.

The ledger: one number per (person, epoch)
-------------------------------------------
Every new memo - of any ldp attribute or of the training label - charges its
``eps_inf`` to one ledger per (person, epoch), capped by
``STREAMGATE_LDP_PERSON_EPSILON``; replaying a memo charges nothing. The schema's
per-attribute epsilon is the price of a memo of that attribute, so it says how
the cap is shared. A memo that would take the ledger past the cap is not
created: the request is answered ``over`` and the privatizer reports a
*stand-in* (the mechanism applied to a value drawn independently of the data)
instead of omitting the attribute.

Why the stand-in and not an omission: whether a request is over the cap is a
function of the person's *pattern* (how many new values, of which attributes,
came before), not of the values themselves; but an omitted attribute would show
that pattern in clear in every later report. A stand-in report has exactly the
distribution of a genuine report of some value, so a single report does not
say whether its person is over the cap, and it carries no information about the
person's value (0 epsilon). The cost is a bias of the estimates towards the
uniform distribution in proportion to the stand-ins (counted in-process as
``suppressed``, never published per person).

Erasure never refunds. The ledger lives under a key that holds no identifier -
``<prefix>:ledger:{<slot tag>}:<HMAC(ledger key, token || epoch)>``, a plain integer
(:func:`stream.ldp.ledger.ledger_key`, the one place of its name) - which the
shredder does not delete: an erasure destroys the memos (and the data key) but
what the person spent in that epoch stays spent until the epoch's retention
ends (its expiry). A person re-appearing after an erasure finds the same ledger
(tk1 token) or, with a new tk2 token, ledgers the gateway already set to the cap up
to the erasure's epoch (:mod:`stream.ldp.ledger`). Integer micro-epsilon keeps sums exact.

Redis layout (braces are hash tags, :mod:`stream.redisdb`)::

    <prefix>:memo:{<subject>}:<epoch>              hash    field "<attribute>:<tag>" -> the permanent response
    <prefix>:ledger:{<slot tag>}:<ledger id>       string  micro-epsilon spent (no identifier; erasure keeps it)
    <prefix>:deadlines:{shard-NN}                  zset    member "<subject>:<epoch>" (ZADD NX, as the gateway)

Memo and ledger expire at the epoch's retention deadline. ``tag`` is an HMAC (key
purpose ``ldp-memo``) of the attribute, its parameters and the true value, so
Redis never holds a true value. The ledger's hash tag names the person's slot only
(:func:`stream.redisdb.slot_tag`), so memo and ledger share a slot without the ledger
naming the token. A batch is resolved in one EVAL per slot (one EVAL on a single server;
pipelined on a cluster), each atomic: two workers racing on a new value agree on one
response and charge the ledger once. New memos are then entered in the deadline index
(ZADD NX, one pipeline): their data key, which the gateway indexed before creating it,
normally put them there already; a crash between the two leaves a memo that Redis's own
expiry removes at the same deadline.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

from stream.errors import KeyUnavailableError
from stream.ldp.ledger import MICRO, ledger_key, ledger_slot
from stream.redisdb import (
    REDIS_ERRORS,
    RedisClient,
    check_prefix,
    deadline_shard,
    deadlines_key,
    eval_many,
    is_cluster,
    person_tag,
)

__all__ = [
    "MICRO",
    "MemoCache",
    "MemoRequest",
    "MemoResult",
    "MemoStore",
    "MemoryMemoStore",
    "RedisMemoStore",
]

class MemoRequest(NamedTuple):
    """Resolve the memo of one (subject, epoch, field); ``candidate`` is a fresh permanent response
    used only if no memo exists yet and the person's ledger (``ledger``: its id) can pay ``cost_micro``."""

    subject: str
    epoch: int
    expire_at: int
    field: str
    attribute: str
    cost_micro: int
    candidate: str
    ledger: str


Status = Literal["memo", "new", "suppressed"]


class MemoResult(NamedTuple):
    status: Status
    report: str | None


class MemoStore(Protocol):
    def resolve(self, requests: Sequence[MemoRequest], budget_micro: int) -> list[MemoResult]:
        """Per request, in order: the existing memo (``memo``), else the candidate stored as the new
        memo with its cost charged to the ledger (``new``), else ``suppressed`` when the ledger would
        pass ``budget_micro`` (the person cap). Raises :class:`KeyUnavailableError` when the store is
        unreachable (nothing is emitted)."""
        ...


#: KEYS: (memo hash, ledger) per request; ARGV[1] budget, then per request "field\tcost\texpire_at\tcandidate".
_RESOLVE_LUA = r"""
local budget = tonumber(ARGV[1])
local out = {}
local dated = {}
for i = 2, #ARGV do
  local field, cost, exp, cand = string.match(ARGV[i], '^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  local mk, lk = KEYS[2 * i - 3], KEYS[2 * i - 2]
  local memo = redis.call('HGET', mk, field)
  if memo then
    out[#out + 1] = 'M' .. memo
  else
    local spent = tonumber(redis.call('GET', lk) or '0')
    if spent + tonumber(cost) > budget then
      out[#out + 1] = 'S'
    else
      redis.call('HSET', mk, field, cand)
      redis.call('INCRBY', lk, cost)
      if not dated[mk] then
        redis.call('EXPIREAT', mk, exp)
        redis.call('EXPIREAT', lk, exp)
        dated[mk] = true
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
    """:class:`MemoStore` on Redis (one server or a cluster; one EVAL per slot of a batch)."""

    def __init__(self, client: RedisClient, prefix: str = "sg", *, chunk: int = 2000, shards: int = 16) -> None:
        self._client = client
        self.prefix = check_prefix(prefix)
        self.shards = int(shards)
        self.cluster = is_cluster(client)
        self._chunk = chunk
        self._script = client.register_script(_RESOLVE_LUA)

    def memo_key(self, subject: str, epoch: int) -> str:
        return f"{self.prefix}:memo:{person_tag(subject)}:{epoch}"

    def ledger_key(self, subject: str, ledger: str) -> str:
        """The ledger ``ledger`` of ``subject`` (:func:`stream.ldp.ledger.ledger_key`)."""
        return ledger_key(self.prefix, subject, ledger)

    def resolve(self, requests: Sequence[MemoRequest], budget_micro: int) -> list[MemoResult]:
        if not requests:
            return []
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            slot = ledger_slot(r.subject) if self.cluster else 0
            groups.setdefault(slot, []).append(i)
        calls: list[tuple[list[str], list[str | int]]] = []
        order: list[list[int]] = []
        for idx in groups.values():
            for start in range(0, len(idx), self._chunk):
                part = idx[start : start + self._chunk]
                keys: list[str] = []
                args: list[str | int] = [budget_micro]
                for i in part:
                    r = requests[i]
                    keys += [self.memo_key(r.subject, r.epoch), self.ledger_key(r.subject, r.ledger)]
                    args.append(f"{r.field}\t{r.cost_micro}\t{r.expire_at}\t{r.candidate}")
                calls.append((keys, args))
                order.append(part)
        out: list[MemoResult | None] = [None] * len(requests)
        try:
            for part, raw in zip(order, eval_many(self._client, self._script, calls), strict=True):
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                for i, res in zip(part, _results(text.split("\n")), strict=True):
                    out[i] = res
            self._index([requests[i] for i, res in enumerate(out) if res is not None and res.status == "new"])
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"LDP memo store unavailable ({type(exc).__name__})") from None
        return [res for res in out if res is not None]

    def _index(self, created: Sequence[MemoRequest]) -> None:
        """ZADD NX the (subject, epoch) of new memos to their deadline shards (one pipeline)."""
        shards: dict[str, dict[str, int]] = {}
        for r in created:
            key = deadlines_key(self.prefix, deadline_shard(r.subject, self.shards))
            shards.setdefault(key, {})[f"{r.subject}:{r.epoch}"] = int(r.expire_at)
        if shards:
            pipe = self._client.pipeline(transaction=False)
            for key, members in shards.items():
                pipe.zadd(key, members, nx=True)
            pipe.execute()

    def __repr__(self) -> str:
        return f"RedisMemoStore(prefix={self.prefix!r})"


class MemoryMemoStore:
    """In-memory :class:`MemoStore` with the same semantics (expiry by an injected clock), for unit tests.
    ``ledgers``: ledger id -> micro-epsilon spent; :meth:`delete` (an erasure) keeps them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.memos: dict[tuple[str, int], dict[str, str]] = {}
        self.ledgers: dict[str, int] = {}
        self.expiry: dict[tuple[str, int], int] = {}
        self.ledger_expiry: dict[str, int] = {}
        self.deadlines: dict[str, int] = {}

    def _expire(self, ref: tuple[str, int], ledger: str) -> None:
        now = self._clock()
        exp = self.expiry.get(ref)
        if exp is not None and now >= exp:
            self.memos.pop(ref, None)
            self.expiry.pop(ref, None)
        lexp = self.ledger_expiry.get(ledger)
        if lexp is not None and now >= lexp:
            self.ledgers.pop(ledger, None)
            self.ledger_expiry.pop(ledger, None)

    def resolve(self, requests: Sequence[MemoRequest], budget_micro: int) -> list[MemoResult]:
        out: list[MemoResult] = []
        for r in requests:
            ref = (r.subject, r.epoch)
            self._expire(ref, r.ledger)
            memo = self.memos.get(ref, {}).get(r.field)
            if memo is not None:
                out.append(MemoResult("memo", memo))
                continue
            spent = self.ledgers.get(r.ledger, 0)
            if spent + r.cost_micro > budget_micro:
                out.append(MemoResult("suppressed", None))
                continue
            self.memos.setdefault(ref, {})[r.field] = r.candidate
            self.ledgers[r.ledger] = spent + r.cost_micro
            self.expiry[ref] = r.expire_at
            self.ledger_expiry[r.ledger] = r.expire_at
            self.deadlines.setdefault(f"{r.subject}:{r.epoch}", r.expire_at)
            out.append(MemoResult("new", r.candidate))
        return out

    def delete(self, subject: str, epoch: int | None = None) -> None:
        """Shred: drop the memos of one (subject, epoch), or of every epoch of a subject. The ledgers
        stay: an erasure never refunds what was spent."""
        for ref in [k for k in self.memos if k[0] == subject]:
            if epoch is None or ref[1] == epoch:
                self.memos.pop(ref, None)
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
