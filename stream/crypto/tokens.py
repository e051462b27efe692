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

Performance: the keyed HMAC state is built once per domain and copied per
call (the inner/outer pads are not re-hashed), and :meth:`Tokenizer.tokens`
memoizes recent values in a bounded LRU since the same people recur.
"""

from __future__ import annotations

import binascii
import threading
from collections import OrderedDict
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from stream.crypto.keyring import Keyring

__all__ = ["TOKEN_PREFIX", "Tokenizer"]

#: Prefix (and format version) of every token.
TOKEN_PREFIX = "tk1_"
_TOKEN_CHARS = 22
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_DEFAULT_MEMO = 65_536


class Tokenizer:
    """Computes keyed HMAC tokens for a :class:`Keyring`. Thread-safe."""

    __slots__ = ("_keyring", "_lock", "_macs", "_memo", "_memo_size")

    def __init__(self, keyring: Keyring, *, memo_size: int = _DEFAULT_MEMO) -> None:
        self._keyring = keyring
        self._macs: dict[str, HMAC] = {}
        self._memo: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._memo_size = max(0, int(memo_size))
        self._lock = threading.Lock()

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

    def tokens(self, domain: str, values: Sequence[str]) -> list[str]:
        """Tokens of many values of one domain (the gateway's batch path), with a bounded LRU memo."""
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

    def __repr__(self) -> str:
        return f"Tokenizer(keyring={self._keyring!r}, domains={sorted(self._macs)!r})"
