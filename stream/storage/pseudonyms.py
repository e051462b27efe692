"""``tk2`` person tokens on Redis: the per-person secrets of :mod:`stream.crypto.tokens`.

Layout (names from :mod:`stream.redisdb`; braces are hash tags)::

    <prefix>:pid:{<L>}        b"3." + token + b"." + S wrapped by the KEK  EXPIREAT = longest DEK of the person
    <prefix>:ptok:{<token>}   L                                          same expiry
    <prefix>:perased:{<L>}    epoch of the person's last erasure          EXPIREAT = that epoch's deadline

``ptok`` lives in the person's slot with their data keys, ``pid`` in the slot of ``L`` - it is
found from the user_id alone - and ``perased`` with it, so the erasure writes it in the step that
deletes ``pid`` and the mint reads it in the script that reads ``pid``.

``S`` (32 random bytes) is wrapped by the KEK, bound to the ``pid`` key name and the token
(:class:`stream.crypto.tokens.PseudonymKeys`): the gateway refuses a value moved or planted there.
It is created once (in a script: create-if-absent, first writer wins) and
its keys' expiry is raised (``EXPIREAT GT``) to the retention deadline of the
epoch the person was last seen in - exactly the deadline of their newest DEK -
so a person who is never seen again loses ``S`` together with their last key.
On one server a script does all of it atomically. On a Redis Cluster ``pid`` and ``ptok``
are in different slots: the ``ptok`` entry (SET NX, then EXPIREAT GT) is written before the
``pid`` script creates or extends the secret, so a secret never exists without its token
index (an index entry of a candidate that lost a race points to the winner's ``L``; it
expires with it).
The shredder deletes both keys when it erases (by token; by user_id it finds the token
through ``L``; :mod:`stream.storage.retention`); the person, if seen again, gets a new token.
The script that deletes ``pid`` leaves the erased marker ``perased`` in the same slot,
atomically (no token in it); the mint reads it in the script that reads ``pid`` and reports it,
and :meth:`Pseudonyms.tokens` hands the new token to ``on_erased`` before returning it - the
gateway then exhausts the new token's ε ledgers up to that epoch (:mod:`stream.ldp.ledger`), so
the erasure refunds nothing.

Values written before the wrap (``2.`` + token + ``.`` + S in the clear) are read as before until
``streamgate keys rewrap-pseudonyms`` (:func:`rewrap_legacy`) has wrapped every one and set
``<prefix>:pseudonyms-wrapped``; from then on a ``2.`` value (planted, or restored from an old
backup) is refused with :class:`stream.errors.LegacyPseudonymError` and counted (``legacy_refused``).

Cached in-process per value like DEKs (bounded, re-checked against Redis every
``max_staleness_seconds``, dropped on the shred channel and - with a key-store guard - when
Redis lost data). Redis losing data means every ``tk2`` token changes (a new ``S`` per person):
the records before and after are no longer joinable by token. That is the price of unlinkability.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from stream.crypto.keyring import Keyring
from stream.crypto.kms import KMS, LocalKMS, WrapCounter
from stream.crypto.tokens import PseudonymKeys
from stream.errors import KeyringError, KeyUnavailableError, LegacyPseudonymError
from stream.redisdb import (
    REDIS_ERRORS,
    RedisClient,
    check_prefix,
    eval_many,
    is_cluster,
    mget,
    perased_key,
    pid_key,
    pseudonyms_wrapped_key,
    ptok_affixes,
    ptok_key,
)

if TYPE_CHECKING:
    from stream.crypto.keystore import KeyStoreGuard

__all__ = ["Pseudonyms", "RewrapStats", "rewrap_legacy"]

_DEFAULT_MEMO = 65_536

# KEYS: n pid keys, then their n erased markers; ARGV[1], ARGV[2] the head and tail of a ptok key name
# (stream.redisdb.ptok_affixes), ARGV[3] expire_at, then (candidate value, candidate token, lookup id) per
# person. Create-if-absent (first writer wins, with its token index; an empty candidate creates nothing and
# returns ''); otherwise raise both expiries (GT).
# Returns per person its value and its erased marker ('' if none).
# One server only: the ptok keys are named here (another slot on a cluster: see _ensure_cluster).
_ENSURE_LUA = r"""
local head, tail, exat = ARGV[1], ARGV[2], ARGV[3]
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local k = KEYS[i]
  local v = redis.call('GET', k)
  if not v then
    v = ARGV[3 * i + 1]
    if v ~= '' then
      redis.call('SET', k, v, 'EXAT', exat)
      redis.call('SET', head .. ARGV[3 * i + 2] .. tail, ARGV[3 * i + 3], 'EXAT', exat)
    end
  else
    redis.call('EXPIREAT', k, exat, 'GT')
    local tok = string.match(v, '^[23]%.(tk2_[A-Za-z0-9_-]+)%.')
    if tok then redis.call('EXPIREAT', head .. tok .. tail, exat, 'GT') end
  end
  out[2 * i - 1] = v
  out[2 * i] = redis.call('GET', KEYS[n + i]) or ''
end
return out
"""

# KEYS[1] one pid key, KEYS[2] its erased marker (the slot of the lookup id): create-if-absent with
# ARGV[1] until ARGV[2] (unless ARGV[1] is empty), else raise its expiry (GT). Returns {value, erased marker or ''}.
_ENSURE_ONE_LUA = r"""
local v = redis.call('GET', KEYS[1])
if not v then
  v = ARGV[1]
  if v == '' then return {'', redis.call('GET', KEYS[2]) or ''} end
  redis.call('SET', KEYS[1], v, 'EXAT', ARGV[2])
else
  redis.call('EXPIREAT', KEYS[1], ARGV[2], 'GT')
end
return {v, redis.call('GET', KEYS[2]) or ''}
"""


class _Pseud(NamedTuple):
    token: str
    checked_at: float
    expire_at: int


class Pseudonyms:
    """``tk2`` person tokens backed by per-person secrets in Redis (module docstring); a
    :class:`stream.crypto.tokens.PersonTokens`. Thread-safe.

    ``tokens`` costs one round trip per batch for people not cached (stale, new, or first seen in
    a later epoch; two if a stale one's secret is gone meanwhile), none otherwise. ``lookup`` never creates a secret (the shredder's path).
    """

    def __init__(self, keyring: Keyring, client: RedisClient, prefix: str, *, domain: str,
                 memo_size: int = _DEFAULT_MEMO, max_staleness_seconds: float = 30.0,
                 clock: Callable[[], float] = time.time, guard: KeyStoreGuard | None = None,
                 on_erased: Callable[[dict[str, int], float], object] | None = None,
                 kms: KMS | None = None, wrap_counter: WrapCounter | None = None, wrap_block: int = 4096) -> None:
        """``kms``: wraps and opens the secrets (default: the keyring's KEKs, if it holds any - the
        gateway; without them :meth:`tokens` refuses and :meth:`lookup` reads the token a value names,
        unverified: the shredder). ``wrap_counter``: counts the secrets' wraps with the data keys' (one
        KEK wrap limit; pass the DEK provider's), reserved ``wrap_block`` at a time (a process
        over-counts by less than a block; no round trip for most new people). ``on_erased(token -> erasure epoch, now)``: called by :meth:`tokens` before it returns the
        tokens of people who carry an erased marker (the gateway exhausts their ledgers:
        :class:`stream.storage.ldp.LedgerExhauster`); an exception fails the call."""
        self.domain = domain
        self.prefix = check_prefix(prefix)
        if kms is None:
            try:
                kms = LocalKMS(keyring)
            except KeyringError:  # a credential without a KEK (the shredder's)
                kms = None
        self.keys = PseudonymKeys(keyring, domain, kms)
        self.wrap_counter = wrap_counter
        self.wrap_block = max(1, int(wrap_block))
        self._wraps_left = 0  # reserved, not yet used (under the lock)
        self._client = client
        self.cluster = is_cluster(client)
        self._script = client.register_script(_ENSURE_ONE_LUA if self.cluster else _ENSURE_LUA)
        self._memo: OrderedDict[str, _Pseud] = OrderedDict()
        self._memo_size = max(1, int(memo_size))
        self.max_staleness_seconds = float(max_staleness_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self.guard = guard
        self.on_erased = on_erased
        self.created = 0
        self.returned = 0  # people minted while their erased marker lived (counted per round trip)
        self.round_trips = 0
        self.legacy_refused = 0  # clear (2.) secrets refused once the store was marked wrapped
        if guard is not None:
            guard.on_reset(self.clear)

    # -- derivations (stream.crypto.tokens.PseudonymKeys) and names ------------------------
    def lookup_id(self, value: str) -> str:
        return self.keys.lookup_id(value)

    def token_from(self, secret: bytes, value: str) -> str:
        return self.keys.token_from(secret, value)

    def absent_token(self, request_id: str) -> str:
        """A token no person has, for the receipt of an erasure of someone without a secret."""
        return self.keys.absent_token(request_id)

    def pid_key(self, lookup_id: str) -> str:
        return pid_key(self.prefix, lookup_id)

    def ptok_key(self, token: str) -> str:
        return ptok_key(self.prefix, token)

    def perased_key(self, lookup_id: str) -> str:
        """The erased marker of a person: the epoch of their last erasure (written by the shredder)."""
        return perased_key(self.prefix, lookup_id)

    # -- the gateway's path ---------------------------------------------------------
    def tokens(self, values: Sequence[str], expire_at: int) -> list[str]:
        """Tokens of ``values``; creates secrets for new people, keeps them until ``expire_at``."""
        now = self._clock()
        out: dict[str, str] = {}
        todo: list[str] = []
        known: set[str] = set()  # cached, only stale: stored, most likely (no candidate wrapped for them)
        with self._lock:
            for v in dict.fromkeys(values):
                e = self._memo.get(v)
                if e is not None and 0 <= now - e.checked_at < self.max_staleness_seconds and e.expire_at >= expire_at:
                    self._memo.move_to_end(v)
                    out[v] = e.token
                else:
                    todo.append(v)
                    if e is not None:
                        known.add(v)
        if todo:
            resolved = self._ensure(todo, int(expire_at), known)
            with self._lock:
                for v, tok in resolved.items():
                    self._memo[v] = _Pseud(tok, now, int(expire_at))
                    self._memo.move_to_end(v)
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
            out.update(resolved)
        return [out[v] for v in values]

    def _ensure(self, values: list[str], expire_at: int, known: Collection[str] = ()) -> dict[str, str]:
        """One pass, two at most: people this process has not seen get a candidate (wrapped) and
        are created if absent; the ``known`` ones (cached, stale) are read and extended without a
        candidate, and created in a second pass only if their secret is gone. So re-checks wrap
        nothing; a person first seen by this process costs one wrap even if stored already."""
        lookup_id, prefix = self.keys.lookup_id, self.prefix
        lookups = [lookup_id(v) for v in values]
        keys = [pid_key(prefix, lookup) for lookup in lookups]
        marks = [perased_key(prefix, lookup) for lookup in lookups]
        raws: list[Any] = [None] * len(values)
        found: list[Any] = [""] * len(values)
        cands: dict[int, tuple[str, bytes]] = {}
        todo = list(range(len(values)))
        try:
            for create in (False, True):
                fresh = [i for i in todo if create or values[i] not in known]
                if fresh:
                    self._reserve(len(fresh))
                    cands.update(zip(fresh, self.keys.new_values([(values[i], keys[i]) for i in fresh]), strict=True))
                sub = [(keys[i], marks[i], lookups[i], cands.get(i, ("", b""))) for i in todo]
                stored = self._ensure_cluster(sub, expire_at) if self.cluster else self._ensure_one_server(sub, expire_at)
                left = []
                for j, i in enumerate(todo):
                    raw, mark = stored[2 * j], stored[2 * j + 1]
                    if not raw:
                        left.append(i)
                    else:
                        raws[i], found[i] = raw, mark
                todo = left
                if not todo:
                    break
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"pseudonym store unavailable ({type(exc).__name__})") from None
        if todo:
            raise KeyUnavailableError("pseudonym secret was not stored")
        if self.guard is not None:
            self.guard.note_loaded()
        out: dict[str, str] = {}
        erased: dict[str, int] = {}
        for i, (v, key, raw, mark) in enumerate(zip(values, keys, raws, found, strict=True)):
            if i in cands and bytes(raw) == cands[i][1]:  # ours: its token is known, nothing to open
                out[v] = tok = cands[i][0]
                self.created += 1
            else:
                out[v] = tok = self._open(raw, key, v)
            if mark:
                try:
                    erased[tok] = int(mark)
                except ValueError:
                    raise KeyUnavailableError("stored erased marker is malformed") from None
        if erased:
            self.returned += len(erased)
            if self.on_erased is not None:
                self.on_erased(erased, self._clock())
        return out

    def _reserve(self, n: int) -> None:
        """Count ``n`` wraps against the KEK's limit before doing them (a block at a time)."""
        if self.wrap_counter is None:
            return
        kek = str(getattr(self.keys.kms, "primary_id", "kms"))
        with self._lock:
            if self._wraps_left >= n:
                self._wraps_left -= n
                return
            need = max(n - self._wraps_left, self.wrap_block)
            self.wrap_counter.reserve(kek, need)  # raises beyond the limit: nothing wrapped
            self._wraps_left += need - n

    def _ensure_one_server(self, sub: list[tuple[str, str, str, tuple[str, bytes]]], expire_at: int) -> list[Any]:
        args: list[bytes | str | int] = [*ptok_affixes(self.prefix), expire_at]
        for _key, _mark, lookup, (tok, cand) in sub:
            args += [cand, tok, lookup]
        out = self._script(keys=[k for k, *_ in sub] + [m for _, m, *_ in sub], args=args)
        self.round_trips += 1
        return list(out)

    def _ensure_cluster(self, sub: list[tuple[str, str, str, tuple[str, bytes]]], expire_at: int) -> list[Any]:
        """The cluster path (module docstring): read the secrets, index the tokens they give (or the
        candidates'), then create (with a candidate) or extend each secret and read its erased marker
        (one script per lookup id's slot); a token that differs from the indexed one (a concurrent
        creator won) is indexed afterwards. Returns value ('' if absent without a candidate) and
        marker per person, flat (as the one-server script)."""
        keys = [k for k, *_ in sub]
        current = mget(self._client, keys)
        self.round_trips += 1

        def token_of(raw: Any) -> str:
            return self.keys.parse(raw)

        def index(pairs: list[tuple[str, str]]) -> None:
            if not pairs:
                return
            pipe = self._client.pipeline(transaction=False)
            for tok, lookup in pairs:
                pipe.set(self.ptok_key(tok), lookup, nx=True, exat=expire_at)
                pipe.expireat(self.ptok_key(tok), expire_at, gt=True)
            pipe.execute()
            self.round_trips += 1

        expected = [token_of(raw) if raw is not None else (tok or None)
                    for raw, (_k, _m, _l, (tok, _c)) in zip(current, sub, strict=True)]
        index([(tok, lookup) for tok, (_k, _m, lookup, _c) in zip(expected, sub, strict=True) if tok])
        pairs = eval_many(self._client, self._script,
                          [([k, m], [cand, expire_at]) for k, m, _l, (_t, cand) in sub])
        self.round_trips += 1
        late = [(token_of(raw), lookup) for (raw, _mark), tok, (_k, _m, lookup, _c) in zip(pairs, expected, sub, strict=True)
                if raw and token_of(raw) != tok]
        index(late)
        return [x for pair in pairs for x in pair]

    # -- the shredder's path ---------------------------------------------------------
    def lookup(self, value: str) -> str | None:
        """The current token of ``value``, or None if the person has no secret (never seen, erased,
        or expired). Creates nothing. Without the wrap key: the token the stored value names (unverified)."""
        key = self.pid_key(self.keys.lookup_id(value))
        try:
            raw = self._client.get(key)
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"pseudonym store unavailable ({type(exc).__name__})") from None
        if raw is None:
            return None
        return self.keys.parse(raw) if self.keys.kms is None else self._open(raw, key, value)

    def _open(self, raw: Any, key: str, value: str) -> str:
        """:meth:`PseudonymKeys.open`, but a clear (``2.``) value only while the store is not marked
        wrapped (one GET per such value: none once the migration ran, unless one was planted)."""
        if self.keys.is_legacy(raw):
            try:
                wrapped = self._client.get(pseudonyms_wrapped_key(self.prefix))
            except REDIS_ERRORS as exc:
                raise KeyUnavailableError(f"pseudonym store unavailable ({type(exc).__name__})") from None
            if wrapped is not None:
                with self._lock:
                    self.legacy_refused += 1
                raise LegacyPseudonymError("a clear (2.) pseudonym secret in a store marked wrapped: refused")
        return self.keys.open(raw, key, value)

    # -- caches ------------------------------------------------------------------------
    def forget(self, token: str) -> int:
        with self._lock:
            gone = [k for k, e in self._memo.items() if e.token == token]
            for k in gone:
                del self._memo[k]
        return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()

    def __repr__(self) -> str:
        return f"Pseudonyms(domain={self.domain!r}, prefix={self.prefix!r}, cached={len(self._memo)})"


class RewrapStats(NamedTuple):
    scanned: int  # pid keys seen
    rewrapped: int  # clear (2.) secrets replaced by their wrapped (3.) value
    changed: int  # changed or gone between the read and the write (left as they were)


# KEYS[1] a pid key; ARGV[1] the clear value read, ARGV[2] its wrapped value: replaced only if unchanged,
# its expiry kept.
_REWRAP_LUA = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


def rewrap_legacy(client: RedisClient, prefix: str, keys: PseudonymKeys, *, now: float,
                  wrap_counter: WrapCounter | None = None, batch: int = 500) -> RewrapStats:
    """``streamgate keys rewrap-pseudonyms``: every clear (``2.``) tk2 secret under ``prefix`` becomes
    its wrapped (``3.``) value - same token, same secret, same expiry - then ``<prefix>:pseudonyms-wrapped``
    is set to ``now`` and gateways refuse ``2.`` values from then on. Needs ``SCAN`` (an operator's
    Redis user, not a worker role) and the KEK (``keys.kms``); wraps count against its limit.
    Idempotent; run it once every gateway writes only wrapped values (all since the wrap)."""
    check_prefix(prefix)
    script = client.register_script(_REWRAP_LUA)
    kek = str(getattr(keys.kms, "primary_id", "kms"))
    scanned = rewrapped = changed = 0
    names: list[bytes] = []

    def flush() -> None:
        nonlocal rewrapped, changed
        todo = [(n.decode(), raw) for n, raw in zip(names, mget(client, [n.decode() for n in names]), strict=True)
                if raw is not None and keys.is_legacy(raw)]
        names.clear()
        if not todo:
            return
        if wrap_counter is not None:
            wrap_counter.reserve(kek, len(todo))  # raises beyond the limit: nothing wrapped
        calls = [([name], [raw, keys.rewrap(raw, name) or raw]) for name, raw in todo]
        done = sum(int(r) for r in eval_many(client, script, calls))
        rewrapped += done
        changed += len(todo) - done

    try:
        for name in client.scan_iter(match=pid_key(prefix, "*"), count=1000):
            scanned += 1
            names.append(name)
            if len(names) >= batch:
                flush()
        flush()
        client.set(pseudonyms_wrapped_key(prefix), repr(float(now)))
    except REDIS_ERRORS as exc:
        raise KeyUnavailableError(f"pseudonym store unavailable ({type(exc).__name__})") from None
    return RewrapStats(scanned, rewrapped, changed)
