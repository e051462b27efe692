"""Wrapping data keys under the KEK (envelope encryption).

:class:`KMS` is the seam: anything that can wrap a data key with associated
data into a self-describing blob, and unwrap it again, can stand in - Vault
Transit, a cloud KMS, or the :class:`LocalKMS` here, which uses the local
:class:`~stream.crypto.keyring.Keyring`.

LocalKMS blob format (all binary)::

    0x01 | len(kek_id) (1 byte) | kek_id (ascii) | nonce (12) | AES-256-GCM(ct || tag)

* The wrapping key of a KEK is ``HKDF(kek, "streamgate/v1/dek-wrap")`` - derived
  from *that* KEK, not from the root, so a KEK is never used raw and never for
  anything but its own purpose.
* The newest KEK wraps; any KEK still in the ring unwraps (rotation-safe).
* The GCM associated data is the blob header plus the caller's ``aad``: a
  wrapped key is bound to its context (the data-key provider binds subject,
  epoch and key id), so a blob copied to another person's slot does not unwrap.
* Every unwrap failure - truncated blob, unknown version or KEK id, wrong
  ``aad``, tampering - raises the same opaque :class:`DecryptError`.

Usage limits (:class:`WrapCounter`): wraps use AES-GCM with a random 96-bit nonce,
and NIST SP 800-38D caps random-nonce GCM at 2**32 invocations per key (nonce
collision probability about q**2 / 2**97: 2**-33 at 2**32). Every wrap batch
therefore reserves its count first with one atomic add to a count shared by every worker
(:meth:`WrapCounter.count`; on Redis an ``INCRBY``: :class:`stream.storage.keys.RedisWrapCounter`): at
``warn_at`` (default 2**30) each crossing is logged and counted (``warnings``,
``last_total``: metric-ready); beyond ``refuse_at`` (default 2**31, half the NIST
bound) no new key is wrapped: :class:`KekUsageExceededError` (a
:class:`KeyUnavailableError`: the gateway fails closed and holds its batch) until the
KEK is rotated (``streamgate keys rotate``: a new KEK starts its own count). We
keep GCM rather than switch to a nonce-free wrap (AES-KW, RFC 3394; or GCM-SIV)
because the stored blobs, their associated-data binding and the KMS seam stay as
they are; the counter is a conservative, cheap guard (one round trip per batch
that creates keys). A Redis data loss resets the count (an undercount); with
limits this far below the bound that costs margin, not safety.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stream.crypto.keyring import WRAP_PURPOSE, Keyring
from stream.errors import DecryptError, KeyUnavailableError

__all__ = ["KMS", "KekUsageExceededError", "LocalKMS", "MemoryWrapCounter", "WrapCounter", "wrap_all"]

log = logging.getLogger("streamgate.kms")

#: Wraps per KEK at which a warning is logged, and beyond which new wraps are refused.
WRAP_WARN_AT = 2**30
WRAP_REFUSE_AT = 2**31

_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_WRAP_PURPOSE = WRAP_PURPOSE
_AAD_LABEL = b"streamgate/v1/dek-wrap\x00"


@runtime_checkable
class KMS(Protocol):
    """Wraps and unwraps data keys. Implementations must be safe to call from several threads."""

    def wrap(self, plaintext_key: bytes, aad: bytes) -> bytes:
        """Encrypt ``plaintext_key`` bound to ``aad``; the blob names the KEK that wrapped it."""
        ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Recover the key from ``blob`` for the same ``aad``; :class:`DecryptError` on any failure."""
        ...


class LocalKMS:
    """A :class:`KMS` over a local :class:`Keyring` (AES-256-GCM under per-KEK HKDF wrapping keys)."""

    __slots__ = ("_ciphers", "_primary_header", "_primary_id", "keyring")

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._ciphers: dict[bytes, AESGCM] = {}
        for key_id in keyring.ids:
            header = _header(key_id)
            self._ciphers[header] = AESGCM(keyring.kek_derive(key_id, _WRAP_PURPOSE))
        self._primary_id = keyring.primary_id
        self._primary_header = _header(self._primary_id)

    def wrap(self, plaintext_key: bytes, aad: bytes) -> bytes:
        """Wrap under the newest KEK: ``header | nonce | GCM(plaintext_key, aad=label|header|aad)``."""
        if not isinstance(plaintext_key, bytes) or not plaintext_key:
            raise TypeError("plaintext_key must be non-empty bytes")
        header = self._primary_header
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._ciphers[header].encrypt(nonce, plaintext_key, _AAD_LABEL + header + aad)

    def wrap_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """:meth:`wrap` of each ``(plaintext_key, aad)``: the same blobs, their nonces slices of one
        random draw (each slice used once)."""
        header = self._primary_header
        encrypt = self._ciphers[header].encrypt
        label = _AAD_LABEL + header
        nonces = os.urandom(_NONCE_BYTES * len(items))
        out: list[bytes] = []
        for i, (plaintext_key, aad) in enumerate(items):
            if not isinstance(plaintext_key, bytes) or not plaintext_key:
                raise TypeError("plaintext_key must be non-empty bytes")
            nonce = nonces[i * _NONCE_BYTES : (i + 1) * _NONCE_BYTES]
            out.append(header + nonce + encrypt(nonce, plaintext_key, label + aad))
        return out

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Unwrap with whichever KEK the blob names. Opaque :class:`DecryptError` on any failure."""
        try:
            id_len = blob[1]
            split = 2 + id_len
            header = bytes(blob[:split])
            cipher = self._ciphers.get(header)
            if blob[0] != _VERSION or cipher is None or len(blob) < split + _NONCE_BYTES + _TAG_BYTES:
                raise DecryptError()
            nonce = blob[split : split + _NONCE_BYTES]
            return cipher.decrypt(nonce, blob[split + _NONCE_BYTES :], _AAD_LABEL + header + aad)
        except (InvalidTag, IndexError, TypeError, ValueError):
            raise DecryptError() from None

    @property
    def primary_id(self) -> str:
        """Id of the KEK that wraps new keys."""
        return self._primary_id

    def __repr__(self) -> str:
        return f"LocalKMS({self.keyring!r})"


def wrap_all(kms: KMS, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """``kms.wrap`` of each ``(plaintext_key, aad)``, in one call where the KMS has ``wrap_many``."""
    many = getattr(kms, "wrap_many", None)
    if many is not None:
        return list(many(items))
    return [kms.wrap(key, aad) for key, aad in items]


def _header(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return bytes((_VERSION, len(raw))) + raw


class KekUsageExceededError(KeyUnavailableError):
    """The primary KEK reached its wrap limit: no new data key is wrapped until the KEK is rotated."""


class WrapCounter(abc.ABC):
    """Counts wraps per KEK in a shared store (module docstring): :meth:`count` is the store's atomic
    add. Thread-safe; one :meth:`count` per reservation."""

    def __init__(self, *, warn_at: int = WRAP_WARN_AT, refuse_at: int = WRAP_REFUSE_AT) -> None:
        if not 0 < warn_at <= refuse_at:
            raise ValueError("need 0 < warn_at <= refuse_at")
        self.warn_at = int(warn_at)
        self.refuse_at = int(refuse_at)
        self.warnings = 0  # reservations that ended at or above warn_at
        self.refusals = 0
        self.last_total: dict[str, int] = {}
        self._lock = threading.Lock()

    @abc.abstractmethod
    def count(self, kek_id: str, n: int) -> int:
        """Add ``n`` to the wraps of ``kek_id`` atomically; the new total.
        :class:`KeyUnavailableError` when the store is unreachable."""

    def reserve(self, kek_id: str, n: int) -> int:
        """Count ``n`` wraps under ``kek_id`` before doing them; returns the new total. Raises
        :class:`KekUsageExceededError` beyond ``refuse_at`` (nothing may be wrapped then)."""
        total = int(self.count(kek_id, int(n)))
        with self._lock:
            self.last_total[kek_id] = total
            if total > self.refuse_at:
                self.refusals += 1
                raise KekUsageExceededError(
                    f"KEK {kek_id} reached its wrap limit ({self.refuse_at} data keys): rotate the KEK "
                    "(streamgate keys rotate); new data keys are refused until then"
                )
            if total >= self.warn_at:
                self.warnings += 1
                log.warning("KEK nears its wrap limit: rotate it soon",
                            extra={"kek_id": kek_id, "wraps": total, "limit": self.refuse_at})
        return total

    def __repr__(self) -> str:
        return f"{type(self).__name__}(warn_at={self.warn_at}, refuse_at={self.refuse_at})"


class MemoryWrapCounter(WrapCounter):
    """A :class:`WrapCounter` in process memory (unit tests, one process)."""

    def __init__(self, *, warn_at: int = WRAP_WARN_AT, refuse_at: int = WRAP_REFUSE_AT) -> None:
        super().__init__(warn_at=warn_at, refuse_at=refuse_at)
        self.totals: dict[str, int] = {}

    def count(self, kek_id: str, n: int) -> int:
        with self._lock:
            self.totals[kek_id] = total = self.totals.get(kek_id, 0) + int(n)
        return total
