"""Keyed tokens: stable pseudonyms for identifiers.

``token(domain, value) = "tk1_" + base64url(HMAC-SHA256(K_domain, utf8(value)))[:22]``

* ``K_domain = keyring.derive("token/" + domain)``: each domain (``user``,
  ``session``, ...) has its own key, so the same string tokenizes differently
  in different domains and tokens cannot be joined across domains.
* A keyed HMAC (not a plain hash) means nobody without the KEK can confirm a
  guess ("is tk1_... the token of alice@example.com?"), which a plain hash of
  low-entropy identifiers would allow.
* 22 base64url characters keep 132 bits of the MAC: collisions are out of
  reach for any realistic number of people.
* Keys come from the keyring's root KEK, so tokens survive KEK rotation.

Pseudonyms that unlink on erasure (``tk2``, :class:`Pseudonyms`; person tokens
are tk2 by default, ``STREAMGATE_PSEUDONYM_TOKENS=false`` opts out): a ``tk1``
token can be recomputed from the user_id by any holder of the master key for
ever, even after the person's erasure. A ``tk2`` token also needs a random
per-person secret ``S`` kept in Redis and destroyed on erasure::

    L     = hex(HMAC-SHA256(K_lookup, utf8(user_id))[:16])     K_lookup = derive("pseudonym-lookup/" + domain)
    token = "tk2_" + base64url(HMAC-SHA256(K_tk2, S || utf8(user_id)))[:22]
                                                                K_tk2    = derive("token2/" + domain)

    <prefix>:pid:{<L>}        b"2." + token + b"." + S (32 random bytes)   EXPIREAT = longest DEK of the person
    <prefix>:ptok:{<token>}   L                                          same expiry
    <prefix>:perased:{<L>}    epoch of the person's last erasure          EXPIREAT = that epoch's deadline

(braces are hash tags: ``ptok`` lives in the person's slot with their data keys, ``pid`` in the
slot of ``L`` - it is found from the user_id alone - and ``perased`` with it, so the erasure
writes it in the step that deletes ``pid`` and the mint reads it in the script that reads ``pid``.)

``S`` is created once (in a script: create-if-absent, first writer wins) and
its keys' expiry is raised (``EXPIREAT GT``) to the retention deadline of the
epoch the person was last seen in - exactly the deadline of their newest DEK -
so a person who is never seen again loses ``S`` together with their last key.
On one server a script does all of it atomically. On a Redis Cluster ``pid`` and ``ptok``
are in different slots: the ``ptok`` entry (SET NX, then EXPIREAT GT) is written before the
``pid`` script creates or extends the secret, so a secret never exists without its token
index (an index entry of a candidate that lost a race points to the winner's ``L``; it
expires with it).
The shredder deletes both keys when it erases (by token; by user_id it
finds the token through ``L``). Afterwards nobody - master key and Redis dump
included - can recompute the token from the user_id: the records retained under
it are unlinkable, and the person, if seen again, gets a new token. The script that deletes
``pid`` leaves the erased marker ``perased`` in the same slot, atomically (no token in it); the
mint reads it in the script that reads ``pid`` and reports it, and :meth:`Pseudonyms.tokens`
hands the new token to ``on_erased`` before returning it - the gateway then exhausts the new
token's ε ledgers up to that epoch (:mod:`stream.ldp.ledger`), so the erasure refunds nothing.

``S`` is mixed with a keyring key, so Redis alone does not let anyone confirm
a guessed user_id either. Cached in-process per value like DEKs (bounded,
re-checked against Redis every ``max_staleness_seconds``, dropped on the shred
channel and - with a key-store guard - when Redis lost data). Redis losing data
means every ``tk2`` token changes (a new ``S`` per person): the records before
and after are no longer joinable by token. That is the price of unlinkability.

Performance: the keyed HMAC state is built once per domain and copied per
call (the inner/outer pads are not re-hashed), and :meth:`Tokenizer.tokens`
memoizes recent values in a bounded LRU since the same people recur.
"""

from __future__ import annotations

import binascii
import hmac
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from stream.crypto.keyring import PSEUDONYM_PURPOSES, Keyring
from stream.errors import KeyUnavailableError
from stream.redisdb import REDIS_ERRORS, RedisClient, check_prefix, eval_many, is_cluster, mget, person_tag

if TYPE_CHECKING:
    from stream.crypto.keystore import KeyStoreGuard

__all__ = ["PSEUDONYM_PREFIX", "TOKEN_PREFIX", "Pseudonyms", "Tokenizer"]

#: Prefix (and format version) of keyring-only tokens.
TOKEN_PREFIX = "tk1_"
#: Prefix of person tokens that need the person's secret (unlink on erasure).
PSEUDONYM_PREFIX = "tk2_"
_TOKEN_CHARS = 22
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_DEFAULT_MEMO = 65_536


class Tokenizer:
    """Computes keyed HMAC tokens for a :class:`Keyring`. Thread-safe."""

    __slots__ = ("_keyring", "_lock", "_macs", "_memo", "_memo_size", "pseudonyms")

    def __init__(self, keyring: Keyring, *, memo_size: int = _DEFAULT_MEMO,
                 pseudonyms: Pseudonyms | None = None) -> None:
        """``pseudonyms``: person tokens of its domain are ``tk2`` (:class:`Pseudonyms`), the rest ``tk1``."""
        self._keyring = keyring
        self._macs: dict[str, HMAC] = {}
        self._memo: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._memo_size = max(0, int(memo_size))
        self._lock = threading.Lock()
        self.pseudonyms = pseudonyms

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def _mac_for(self, domain: str) -> HMAC:
        if not isinstance(domain, str) or not domain:
            raise ValueError("token domain must be a non-empty string")
        mac = HMAC(self._keyring.derive("token/" + domain), hashes.SHA256())
        self._macs[domain] = mac
        return mac

    def token(self, domain: str, value: str) -> str:
        """The token of ``value`` in ``domain``: deterministic, and different in every other domain."""
        mac = self._macs.get(domain)
        if mac is None:
            mac = self._mac_for(domain)
        if type(value) is not str:
            # The message names the type only, never the value (it is an identifier).
            raise TypeError(f"token value must be str, not {type(value).__name__}")
        ctx = mac.copy()
        ctx.update(value.encode("utf-8"))
        return TOKEN_PREFIX + binascii.b2a_base64(ctx.finalize(), newline=False)[:_TOKEN_CHARS].translate(
            _TO_URLSAFE
        ).decode("ascii")

    def tokens(self, domain: str, values: Sequence[str], *, expire_at: int | None = None) -> list[str]:
        """Tokens of many values of one domain (the gateway's batch path), with a bounded LRU memo.
        The person domain of ``pseudonyms`` goes there (``expire_at``: the batch's DEK deadline)."""
        pseud = self.pseudonyms
        if pseud is not None and domain == pseud.domain:
            if expire_at is None:
                raise ValueError("person tokens need the retention deadline (expire_at) of the batch")
            return pseud.tokens(values, expire_at)
        if self._memo_size == 0:
            return [self.token(domain, v) for v in values]
        memo = self._memo
        out: list[str] = []
        append = out.append
        with self._lock:
            for value in values:
                memo_key = (domain, value)
                tok = memo.get(memo_key)
                if tok is None:
                    tok = self.token(domain, value)
                    memo[memo_key] = tok
                    if len(memo) > self._memo_size:
                        memo.popitem(last=False)
                else:
                    memo.move_to_end(memo_key)
                append(tok)
        return out

    def clear_memo(self) -> None:
        """Forget memoized (value -> token) pairs, e.g. after an erasure request."""
        with self._lock:
            self._memo.clear()
        if self.pseudonyms is not None:
            self.pseudonyms.clear()

    def forget(self, token: str) -> int:
        """Drop the memo entries mapping to ``token`` (an erased person): a scan of the memo,
        run per erasure announcement only. Returns how many were dropped."""
        with self._lock:
            gone = [k for k, v in self._memo.items() if v == token]
            for k in gone:
                del self._memo[k]
        n = len(gone)
        if self.pseudonyms is not None:
            n += self.pseudonyms.forget(token)
        return n

    def __repr__(self) -> str:
        return f"Tokenizer(keyring={self._keyring!r}, domains={sorted(self._macs)!r})"


# --------------------------------------------------------------------------- tk2 pseudonyms
_SECRET_BYTES = 32
_VALUE_RE = re.compile(rb"2\.(tk2_[A-Za-z0-9_-]{22})\.(.{32})", re.DOTALL)

# KEYS: n pid keys, then their n erased markers; ARGV[1] prefix, ARGV[2] expire_at, then (candidate
# value, candidate token, lookup id) per person. Create-if-absent (first writer wins, with its token
# index); otherwise raise both expiries (GT). Returns per person its value and its erased marker ('' if none).
# One server only: the ptok keys are built here (another slot on a cluster: see _ensure_cluster).
_ENSURE_LUA = r"""
local prefix, exat = ARGV[1], ARGV[2]
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local k = KEYS[i]
  local v = redis.call('GET', k)
  if not v then
    v = ARGV[3 * i]
    redis.call('SET', k, v, 'EXAT', exat)
    redis.call('SET', prefix .. ':ptok:{' .. ARGV[3 * i + 1] .. '}', ARGV[3 * i + 2], 'EXAT', exat)
  else
    redis.call('EXPIREAT', k, exat, 'GT')
    local tok = string.match(v, '^2%.(tk2_[A-Za-z0-9_-]+)%.')
    if tok then redis.call('EXPIREAT', prefix .. ':ptok:{' .. tok .. '}', exat, 'GT') end
  end
  out[2 * i - 1] = v
  out[2 * i] = redis.call('GET', KEYS[n + i]) or ''
end
return out
"""

# KEYS[1] one pid key, KEYS[2] its erased marker (the slot of the lookup id): create-if-absent with
# ARGV[1] until ARGV[2], else raise its expiry (GT). Returns {value, erased marker or ''}.
_ENSURE_ONE_LUA = r"""
local v = redis.call('GET', KEYS[1])
if not v then
  v = ARGV[1]
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
    """``tk2`` person tokens backed by per-person secrets in Redis (module docstring). Thread-safe.

    ``tokens`` costs one round trip per batch for people not cached (new, stale, or first seen
    in a later epoch), none otherwise. ``lookup`` never creates a secret (the shredder's path).
    """

    def __init__(self, keyring: Keyring, client: RedisClient, prefix: str, *, domain: str,
                 memo_size: int = _DEFAULT_MEMO, max_staleness_seconds: float = 30.0,
                 clock: Callable[[], float] = time.time, guard: KeyStoreGuard | None = None,
                 on_erased: Callable[[dict[str, int], float], object] | None = None) -> None:
        """``on_erased(token -> erasure epoch, now)``: called by :meth:`tokens` before it returns the
        tokens of people who carry an erased marker (the gateway exhausts their ledgers:
        :class:`stream.storage.ldp.LedgerExhauster`); an exception fails the call."""
        self.domain = domain
        self.prefix = check_prefix(prefix)
        self._client = client
        lookup_purpose, token_purpose = PSEUDONYM_PURPOSES
        self._lookup_key = keyring.derive(lookup_purpose + domain)
        self._token_mac = HMAC(keyring.derive(token_purpose + domain), hashes.SHA256())
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
        if guard is not None:
            guard.on_reset(self.clear)

    # -- derivations --------------------------------------------------------------
    def lookup_id(self, value: str) -> str:
        if type(value) is not str:
            raise TypeError(f"token value must be str, not {type(value).__name__}")
        return hmac.digest(self._lookup_key, value.encode("utf-8"), "sha256")[:16].hex()

    def token_from(self, secret: bytes, value: str) -> str:
        """The ``tk2`` token of ``value`` under the person's secret (needs the keyring as well)."""
        ctx = self._token_mac.copy()
        ctx.update(secret + value.encode("utf-8"))
        return PSEUDONYM_PREFIX + binascii.b2a_base64(ctx.finalize(), newline=False)[:_TOKEN_CHARS].translate(
            _TO_URLSAFE).decode("ascii")

    def pid_key(self, lookup_id: str) -> str:
        return f"{self.prefix}:pid:{person_tag(lookup_id)}"

    def ptok_key(self, token: str) -> str:
        return f"{self.prefix}:ptok:{person_tag(token)}"

    def perased_key(self, lookup_id: str) -> str:
        """The erased marker of a person: the epoch of their last erasure (written by the shredder)."""
        return f"{self.prefix}:perased:{person_tag(lookup_id)}"

    # -- the gateway's path ---------------------------------------------------------
    def tokens(self, values: Sequence[str], expire_at: int) -> list[str]:
        """Tokens of ``values``; creates secrets for new people, keeps them until ``expire_at``."""
        now = self._clock()
        out: dict[str, str] = {}
        todo: list[str] = []
        with self._lock:
            for v in dict.fromkeys(values):
                e = self._memo.get(v)
                if e is not None and 0 <= now - e.checked_at < self.max_staleness_seconds and e.expire_at >= expire_at:
                    self._memo.move_to_end(v)
                    out[v] = e.token
                else:
                    todo.append(v)
        if todo:
            resolved = self._ensure(todo, int(expire_at))
            with self._lock:
                for v, tok in resolved.items():
                    self._memo[v] = _Pseud(tok, now, int(expire_at))
                    self._memo.move_to_end(v)
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
            out.update(resolved)
        return [out[v] for v in values]

    def _ensure(self, values: list[str], expire_at: int) -> dict[str, str]:
        keys: list[str] = []
        lookups: list[str] = []
        cands: list[bytes] = []
        args: list[bytes | str | int] = [self.prefix, expire_at]
        for v in values:
            secret = os.urandom(_SECRET_BYTES)
            tok = self.token_from(secret, v)
            lookups.append(self.lookup_id(v))
            keys.append(self.pid_key(lookups[-1]))
            cands.append(b"2." + tok.encode("ascii") + b"." + secret)
            args += [cands[-1], tok, lookups[-1]]
        marks = [self.perased_key(lookup) for lookup in lookups]
        try:
            if self.cluster:
                stored: Any = self._ensure_cluster(keys, marks, lookups, cands, expire_at)
            else:
                stored = self._script(keys=keys + marks, args=args)
                self.round_trips += 1
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"pseudonym store unavailable ({type(exc).__name__})") from None
        if self.guard is not None:
            self.guard.note_loaded()
        out: dict[str, str] = {}
        erased: dict[str, int] = {}
        for v, raw, mark, cand in zip(values, stored[0::2], stored[1::2], cands, strict=True):
            secret = self._parse(raw)
            out[v] = tok = self.token_from(secret, v)
            if bytes(raw) == cand:
                self.created += 1
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

    def _ensure_cluster(self, keys: list[str], marks: list[str], lookups: list[str], cands: list[bytes],
                        expire_at: int) -> list[Any]:
        """The cluster path (module docstring): read the secrets, index the tokens they give (or the
        candidates'), then create or extend each secret and read its erased marker (one script per
        lookup id's slot); a token that differs from the indexed one (a concurrent creator won) is
        indexed afterwards. Returns value and marker per person, flat (as the one-server script)."""
        current = mget(self._client, keys)
        self.round_trips += 1

        def token_of(raw: Any) -> str:
            m = _VALUE_RE.fullmatch(bytes(raw)) if raw is not None else None
            if m is None:
                raise KeyUnavailableError("stored pseudonym secret is malformed")
            return m.group(1).decode("ascii")

        def index(pairs: list[tuple[str, str]]) -> None:
            pipe = self._client.pipeline(transaction=False)
            for tok, lookup in pairs:
                pipe.set(self.ptok_key(tok), lookup, nx=True, exat=expire_at)
                pipe.expireat(self.ptok_key(tok), expire_at, gt=True)
            pipe.execute()
            self.round_trips += 1

        expected = [token_of(raw if raw is not None else cand) for raw, cand in zip(current, cands, strict=True)]
        index(list(zip(expected, lookups, strict=True)))
        pairs = eval_many(self._client, self._script,
                          [([k, m], [c, expire_at]) for k, m, c in zip(keys, marks, cands, strict=True)])
        self.round_trips += 1
        stored = [raw for raw, _mark in pairs]
        late = [(token_of(raw), lookup) for raw, tok, lookup in zip(stored, expected, lookups, strict=True)
                if token_of(raw) != tok]
        if late:
            index(late)
        return [x for pair in pairs for x in pair]

    @staticmethod
    def _parse(raw: Any) -> bytes:
        m = _VALUE_RE.fullmatch(bytes(raw)) if raw is not None else None
        if m is None:
            raise KeyUnavailableError("stored pseudonym secret is malformed")
        return m.group(2)

    # -- the shredder's path ---------------------------------------------------------
    def lookup(self, value: str) -> str | None:
        """The current token of ``value``, or None if the person has no secret (never seen, erased,
        or expired). Creates nothing."""
        try:
            raw = self._client.get(self.pid_key(self.lookup_id(value)))
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"pseudonym store unavailable ({type(exc).__name__})") from None
        return None if raw is None else self.token_from(self._parse(raw), value)

    def absent_token(self, request_id: str) -> str:
        """A token no person has, for the receipt of an erasure of someone without a secret."""
        return self.token_from(b"\0" * _SECRET_BYTES, "absent\0" + request_id)

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
