"""Ed25519 signatures: erasure requests, audit receipts and model snapshots.

Recipe layer over ``cryptography``'s Ed25519:

* **Keys.** Signer ``name`` (``erasure``, ``receipt``, ``snapshot``) has the seed
  ``keyring.derive("sign/" + name)``. The master keyring derives every seed (dev, demo);
  a role credential (:class:`stream.crypto.keyring.RoleKeyring`) holds only its own seed and
  the *public* keys it verifies with. :func:`signing_key` / :func:`verify_key` get them.
* **Domain separation.** Signed bytes are ``b"streamgate/v1/sig/" + context + b"\\x00" + message``,
  so a signature made for one purpose never verifies for another.
* **Canonical encoding** (:func:`canonical`): each field as 4-byte big-endian length + UTF-8
  bytes, so two different field lists never encode alike.
* **One opaque error.** Every verification failure (bad signature, wrong key, malformed
  base64, wrong length) raises :class:`SignatureError` with the same message.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from stream.crypto.keyring import Keyring, key_fingerprint
from stream.errors import StreamgateError

__all__ = [
    "SIGNATURE_BYTES",
    "SignatureError",
    "canonical",
    "decode_signature",
    "encode_signature",
    "public_key_id",
    "sign",
    "signing_key",
    "verify",
    "verify_key",
]

SIGNATURE_BYTES = 64
_DOMAIN = b"streamgate/v1/sig/"
_LEN = struct.Struct(">I")


class SignatureError(StreamgateError):
    """A signature did not verify. Deliberately opaque: one message for every cause."""

    def __init__(self, message: str = "signature verification failed") -> None:
        super().__init__(message)


def signing_key(keyring: Keyring, name: str) -> Ed25519PrivateKey:
    """The private key of signer ``name`` (:class:`KeyringError` if the credential lacks it)."""
    return Ed25519PrivateKey.from_private_bytes(keyring.derive("sign/" + name))


def verify_key(keyring: Keyring, name: str) -> Ed25519PublicKey:
    """The public key of signer ``name`` (:class:`KeyringError` if the credential lacks it)."""
    return Ed25519PublicKey.from_public_bytes(keyring.public_key(name))


def public_key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short public id of a signing key pair (:func:`key_fingerprint` of the raw public key)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return key_fingerprint(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))


def canonical(fields: Iterable[str | bytes | None]) -> bytes:
    """Length-prefixed encoding of ``fields`` (``None`` encodes as length 0xFFFFFFFF, distinct from "")."""
    out = bytearray()
    for f in fields:
        if f is None:
            out += b"\xff\xff\xff\xff"
            continue
        raw = f.encode("utf-8") if isinstance(f, str) else bytes(f)
        out += _LEN.pack(len(raw)) + raw
    return bytes(out)


def _signed_bytes(context: str, message: bytes) -> bytes:
    if not context or "\x00" in context:
        raise ValueError("context must be a non-empty string without NUL")
    return _DOMAIN + context.encode("ascii") + b"\x00" + message


def sign(key: Ed25519PrivateKey, context: str, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``message`` for ``context``."""
    return key.sign(_signed_bytes(context, message))


def verify(key: Ed25519PublicKey, context: str, message: bytes, signature: bytes) -> None:
    """Check ``signature``; :class:`SignatureError` on any failure."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise SignatureError()
    try:
        key.verify(signature, _signed_bytes(context, message))
    except InvalidSignature:
        raise SignatureError() from None


def encode_signature(signature: bytes) -> str:
    """URL-safe base64 without padding (86 characters)."""
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")


def decode_signature(text: object) -> bytes:
    """Inverse of :func:`encode_signature`; :class:`SignatureError` if it is not one."""
    if not isinstance(text, str) or len(text) != 86:
        raise SignatureError()
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError):
        raise SignatureError() from None
    if len(raw) != SIGNATURE_BYTES or encode_signature(raw) != text:
        raise SignatureError()
    return raw
