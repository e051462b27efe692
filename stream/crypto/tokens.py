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

    {prefix}:pid:{L}        b"2." + token + b"." + S (32 random bytes)   EXPIREAT = longest DEK of the person
    {prefix}:ptok:{token}   L                                          same expiry
    {prefix}:perased:{L}    epoch of the person's last erasure          EXPIREAT = that epoch's deadline

``S`` is created once (in a script: create-if-absent, first writer wins) and
its keys' expiry is raised (``EXPIREAT GT``) to the retention deadline of the
epoch the person was last seen in - exactly the deadline of their newest DEK -
so a person who is never seen again loses ``S`` together with their last key.
The shredder deletes both keys in its erasure script (by token; by user_id it
finds the token through ``L``). Afterwards nobody - master key and Redis dump
included - can recompute the token from the user_id: the records retained under
it are unlinkable, and the person, if seen again, gets a new token. The same script leaves the
erased marker ``perased`` (no token in it); the mint reports it, and :meth:`Pseudonyms.tokens`
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

import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from stream.crypto.keyring import PSEUDONYM_PURPOSES, Keyring
from stream.errors import KeyUnavailableError

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
# value, candidate token) per person. Create-if-absent (first writer wins, with its token index);
# otherwise raise both expiries (GT). Returns per person its value and its erased marker ('' if none).
_ENSURE_LUA = r"""
local prefix, exat = ARGV[1], ARGV[2]
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local k = KEYS[i]
  local v = redis.call('GET', k)
  if not v then
    v = ARGV[1 + 2 * i]
    redis.call('SET', k, v, 'EXAT', exat)
    redis.call('SET', prefix .. ':ptok:' .. ARGV[2 + 2 * i], string.sub(k, #prefix + 6), 'EXAT', exat)
  else
    redis.call('EXPIREAT', k, exat, 'GT')
    local tok = string.match(v, '^2%.(tk2_[A-Za-z0-9_-]+)%.')
    if tok then redis.call('EXPIREAT', prefix .. ':ptok:' .. tok, exat, 'GT') end
  end
  out[2 * i - 1] = v
  out[2 * i] = redis.call('GET', KEYS[n + i]) or ''
end
return out
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

    def __init__(self, keyring: Keyring, client: redis.Redis, prefix: str, *, domain: str,
                 memo_size: int = _DEFAULT_MEMO, max_staleness_seconds: float = 30.0,
                 clock: Callable[[], float] = time.time, guard: KeyStoreGuard | None = None,
                 on_erased: Callable[[dict[str, int], float], object] | None = None) -> None:
        """``on_erased(token -> erasure epoch, now)``: called by :meth:`tokens` before it returns the
        tokens of people who carry an erased marker (the gateway exhausts their ledgers:
        :class:`stream.ldp.ledger.LedgerExhauster`); an exception fails the call."""
        if not prefix or ":" in prefix:
            raise ValueError("prefix must be non-empty and contain no ':'")
        self.domain = domain
        self.prefix = prefix
        self._client = client
        lookup_purpose, token_purpose = PSEUDONYM_PURPOSES
        self._lookup_key = keyring.derive(lookup_purpose + domain)
        self._token_mac = HMAC(keyring.derive(token_purpose + domain), hashes.SHA256())
        self._script = client.register_script(_ENSURE_LUA)
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
        return f"{self.prefix}:pid:{lookup_id}"

    def ptok_key(self, token: str) -> str:
        return f"{self.prefix}:ptok:{token}"

    def perased_key(self, lookup_id: str) -> str:
        """The erased marker of a person: the epoch of their last erasure (written by the shredder)."""
        return f"{self.prefix}:perased:{lookup_id}"

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
        marks: list[str] = []
        args: list[bytes | str | int] = [self.prefix, expire_at]
        for v in values:
            secret = os.urandom(_SECRET_BYTES)
            tok = self.token_from(secret, v)
            lookup = self.lookup_id(v)
            keys.append(self.pid_key(lookup))
            marks.append(self.perased_key(lookup))
            args += [b"2." + tok.encode("ascii") + b"." + secret, tok]
        try:
            stored: Any = self._script(keys=keys + marks, args=args)
        except (redis.RedisError, OSError) as exc:
            raise KeyUnavailableError(f"pseudonym store unavailable ({type(exc).__name__})") from None
        self.round_trips += 1
        if self.guard is not None:
            self.guard.note_loaded()
        out: dict[str, str] = {}
        erased: dict[str, int] = {}
        for v, raw, mark, cand in zip(values, stored[0::2], stored[1::2], args[3::2], strict=True):
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
        except (redis.RedisError, OSError) as exc:
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
