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
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stream.crypto.keyring import WRAP_PURPOSE, Keyring
from stream.errors import DecryptError

__all__ = ["KMS", "LocalKMS"]

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


def _header(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return bytes((_VERSION, len(raw))) + raw
