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

Pseudonyms that unlink on erasure (``tk2``; person tokens are tk2 by default,
``STREAMGATE_PSEUDONYM_TOKENS=false`` opts out): a ``tk1`` token can be recomputed from the
user_id by any holder of the master key for ever, even after the person's erasure. A ``tk2``
token also needs a random per-person secret ``S``, kept in a store and destroyed on erasure
(:class:`PseudonymKeys` here; the store: :class:`stream.storage.pseudonyms.Pseudonyms`)::

    L     = hex(HMAC-SHA256(K_lookup, utf8(user_id))[:16])     K_lookup = derive("pseudonym-lookup/" + domain)
    token = "tk2_" + base64url(HMAC-SHA256(K_tk2, S || utf8(user_id)))[:22]
                                                                K_tk2    = derive("token2/" + domain)
    stored value = b"3." + token + b"." + KMS.wrap(S, aad = lp("streamgate/v1/pseudonym", key name, token))
                   found by L (its key name: stream.redisdb.pid_key)

``S`` is wrapped by the KEK (:mod:`.kms`) and bound to its key name and token: a value copied to
another person's key, or carrying another token, does not open (:class:`KeyUnavailableError`),
so whoever can write to the store cannot plant or move a secret. The token is in the clear: the
shredder (no wrap key) finds it by user_id through ``L``. Values ``b"2." + token + b"." + S``
(written before the wrap) are still read. Once ``S`` and its index are destroyed nobody can
recompute the token from the user_id; a copy of the store taken *before* (backup, AOF, ``DUMP``)
still links ``L`` to the token, hence the user_id to the token for anyone holding ``K_lookup``
(gateway, shredder, master keyring): docs/privacy.md, "Redis persistence and backups".

Performance: the keyed HMAC state is built once per domain and copied per
call (the inner/outer pads are not re-hashed), and :meth:`Tokenizer.tokens`
memoizes recent values in a bounded LRU since the same people recur.
"""

from __future__ import annotations

import binascii
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from stream.crypto.keyring import PSEUDONYM_PURPOSES, Keyring
from stream.crypto.kms import wrap_all
from stream.errors import DecryptError, KeyUnavailableError

if TYPE_CHECKING:
    from stream.crypto.kms import KMS

__all__ = ["PSEUDONYM_PREFIX", "TOKEN_PREFIX", "PersonTokens", "PseudonymKeys", "Tokenizer"]

#: Prefix (and format version) of keyring-only tokens.
TOKEN_PREFIX = "tk1_"
#: Prefix of person tokens that need the person's secret (unlink on erasure).
PSEUDONYM_PREFIX = "tk2_"
_TOKEN_CHARS = 22
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_DEFAULT_MEMO = 65_536
_SECRET_BYTES = 32
_VALUE_RE = re.compile(rb"([23])\.(tk2_[A-Za-z0-9_-]{22})\.(.+)", re.DOTALL)
_WRAP_LABEL = b"streamgate/v1/pseudonym"


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


_AAD_HEAD = _lp(_WRAP_LABEL)


def _utf8(value: str) -> bytes:
    """``value`` as UTF-8; a lone surrogate (from a lenient JSON parser) is a ValueError that, unlike
    UnicodeEncodeError, quotes no character of the identifier."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("token value is not valid Unicode (a lone surrogate)") from None


class PersonTokens(Protocol):
    """Person tokens of one domain that need a store (``tk2``: :class:`stream.storage.pseudonyms.Pseudonyms`)."""

    domain: str

    def tokens(self, values: Sequence[str], expire_at: int) -> list[str]:
        """Tokens of ``values``; the people's secrets are kept until ``expire_at``."""
        ...

    def clear(self) -> None:
        """Forget every cached token."""
        ...

    def forget(self, token: str) -> int:
        """Forget the cached entries of ``token``; how many."""
        ...


class Tokenizer:
    """Computes keyed HMAC tokens for a :class:`Keyring`. Thread-safe."""

    __slots__ = ("_keyring", "_lock", "_macs", "_memo", "_memo_size", "pseudonyms")

    def __init__(self, keyring: Keyring, *, memo_size: int = _DEFAULT_MEMO,
                 pseudonyms: PersonTokens | None = None) -> None:
        """``pseudonyms``: person tokens of its domain are ``tk2`` (:class:`PersonTokens`), the rest ``tk1``."""
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
        ctx.update(_utf8(value))
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
class PseudonymKeys:
    """The ``tk2`` derivations of one domain (module docstring): lookup ids, tokens from a person's
    secret, and the stored value that carries both. ``kms`` wraps and opens secrets (the gateway);
    without it only :meth:`parse` and the derivations work (the shredder). Pure; thread-safe."""

    __slots__ = ("_lookup_mac", "_token_mac", "domain", "kms")

    def __init__(self, keyring: Keyring, domain: str, kms: KMS | None = None) -> None:
        lookup_purpose, token_purpose = PSEUDONYM_PURPOSES
        self.domain = domain
        self.kms = kms
        # keyed states built once, copied per call (the pads are not re-hashed)
        self._lookup_mac = HMAC(keyring.derive(lookup_purpose + domain), hashes.SHA256())
        self._token_mac = HMAC(keyring.derive(token_purpose + domain), hashes.SHA256())

    def lookup_id(self, value: str) -> str:
        """``L``: how the store finds a person's secret from the user_id alone."""
        if type(value) is not str:
            raise TypeError(f"token value must be str, not {type(value).__name__}")
        ctx = self._lookup_mac.copy()
        ctx.update(_utf8(value))
        return ctx.finalize()[:16].hex()

    def token_from(self, secret: bytes, value: str) -> str:
        """The ``tk2`` token of ``value`` under the person's secret (needs the keyring as well)."""
        ctx = self._token_mac.copy()
        ctx.update(secret + _utf8(value))
        return PSEUDONYM_PREFIX + binascii.b2a_base64(ctx.finalize(), newline=False)[:_TOKEN_CHARS].translate(
            _TO_URLSAFE).decode("ascii")

    @staticmethod
    def _aad(key_name: str, token: str) -> bytes:
        return _AAD_HEAD + _lp(key_name.encode("utf-8"), token.encode("ascii"))

    def _kms(self) -> KMS:
        if self.kms is None:
            raise KeyUnavailableError("pseudonym secrets need the wrap key (this credential has none)")
        return self.kms

    def new_value(self, value: str, key_name: str) -> tuple[str, bytes]:
        """A candidate for a new person stored at ``key_name``: ``(token, stored value)`` under a
        fresh random secret, wrapped by the KEK and bound to ``key_name`` and the token."""
        return self.new_values([(value, key_name)])[0]

    def new_values(self, people: Sequence[tuple[str, str]]) -> list[tuple[str, bytes]]:
        """:meth:`new_value` of each ``(value, key_name)``: the secrets are slices of one random
        draw (each used once), wrapped in one call."""
        kms = self._kms()
        rand = os.urandom(_SECRET_BYTES * len(people))
        drawn = [rand[i * _SECRET_BYTES : (i + 1) * _SECRET_BYTES] for i in range(len(people))]
        tokens = [self.token_from(secret, value) for secret, (value, _) in zip(drawn, people, strict=True)]
        blobs = wrap_all(kms, [(secret, self._aad(key_name, token))
                               for secret, token, (_, key_name) in zip(drawn, tokens, people, strict=True)])
        return [(token, b"3." + token.encode("ascii") + b"." + blob) for token, blob in zip(tokens, blobs, strict=True)]

    @staticmethod
    def parse(raw: Any) -> str:
        """The token a stored value names (no key needed, nothing verified); :class:`KeyUnavailableError`
        if it is malformed."""
        m = _VALUE_RE.fullmatch(bytes(raw)) if raw is not None else None
        if m is None or (m.group(1) == b"2" and len(m.group(3)) != _SECRET_BYTES):
            raise KeyUnavailableError("stored pseudonym secret is malformed")
        return m.group(2).decode("ascii")

    def open(self, raw: Any, key_name: str, value: str) -> str:
        """The token of ``value`` from the value stored at ``key_name``: the secret unwrapped (bound to
        the key name and the token it names) and the token recomputed from it and ``value``.
        :class:`KeyUnavailableError` if malformed, moved, planted or not this person's."""
        token = self.parse(raw)
        body = bytes(raw)[len(token) + 3:]
        if bytes(raw)[:1] == b"2":
            secret = body  # written before the wrap
        else:
            try:
                secret = self._kms().unwrap(body, self._aad(key_name, token))
            except DecryptError:
                raise KeyUnavailableError("stored pseudonym secret does not open under its key name") from None
        if len(secret) != _SECRET_BYTES or self.token_from(secret, value) != token:
            raise KeyUnavailableError("stored pseudonym secret is not this person's")
        return token

    @staticmethod
    def is_legacy(raw: Any) -> bool:
        """A value written before secrets were wrapped: ``2.<token>.<secret in the clear>``."""
        return bytes(raw)[:2] == b"2."

    def rewrap(self, raw: Any, key_name: str) -> bytes | None:
        """The wrapped (``3.``) value of a clear (``2.``) one stored at ``key_name``, the same token and
        secret; None if ``raw`` is wrapped already. :class:`KeyUnavailableError` if malformed."""
        token = self.parse(raw)
        if not self.is_legacy(raw):
            return None
        secret = bytes(raw)[len(token) + 3:]
        return b"3." + token.encode("ascii") + b"." + self._kms().wrap(secret, self._aad(key_name, token))

    def absent_token(self, request_id: str) -> str:
        """A token no person has, for the receipt of an erasure of someone without a secret."""
        return self.token_from(b"\0" * _SECRET_BYTES, "absent\0" + request_id)

    def __repr__(self) -> str:
        return f"PseudonymKeys(domain={self.domain!r})"
