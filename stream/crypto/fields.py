"""The field ciphertext format: one encrypted JSON value as a self-describing string.

Format (version ``sg1``)::

    sg1.{key_id}.{epoch}.{base64url(nonce(12) || AES-256-GCM ciphertext || tag(16)), no padding}

* ``key_id`` and ``epoch`` name the data key (:class:`~stream.crypto.deks.DataKey`)
  so a reader can fetch it - or learn that it was shredded - without trying keys.
* The plaintext is ``orjson.dumps(value)``: any JSON value round-trips with its
  type (strings, ints, floats, bools, lists, objects). ``None`` is not encrypted:
  null stays null. Limits are orjson's: ints must fit in 64 bits, strings must be
  valid Unicode, and NaN/Infinity (not JSON) serialize as null.
* The associated data binds the ciphertext to its context::

      LP("sg1") | LP(schema_id) | LP(field_path) | LP(subject) | LP(str(epoch)) | LP(key_id)

  where ``LP(x) = len(x) as 4-byte big-endian || x``. Length prefixes make the
  encoding injective (``"a|b" + "c"`` cannot collide with ``"a" + "b|c"``), so a
  ciphertext moved to another schema, field, person, epoch or key fails to
  authenticate.
* Nonces are 96 random bits from ``os.urandom`` per value (no counter state to
  lose across forks or restarts; :func:`encrypt_many` reads a batch's nonces in one call
  and uses each 12-byte slice once). With one key per person per epoch, the number
  of encryptions per key stays far below the 2**32 random-nonce bound.
* Only canonical strings parse: base64url without padding whose unused trailing
  bits are zero, a canonical decimal epoch, nothing else. So a changed character
  never decodes to the same bytes - every edit is detected.
* Length hiding (``pad=buckets``, the schema's ``x-privacy.pad``): the plaintext is
  padded before encryption to the smallest bucket that holds it plus one byte, or to
  a multiple of the largest bucket beyond it: ``json || 0x80 || 0x00*``. JSON text
  never ends in ``0x80`` or ``0x00``, so decryption strips padding whenever present
  and unpadded ciphertexts (same ``sg1`` format) read as before. The padding is
  inside the AEAD: it is authenticated like the value. Only the bucket leaks.
* Every failure of :func:`decrypt_value` (malformed, tampered, wrong binding,
  wrong key) raises the same :class:`DecryptError` with the same message: the
  error is no oracle, and it never contains the input.
"""

from __future__ import annotations

import binascii
import os
import re
from typing import Any, NamedTuple

import orjson
from cryptography.exceptions import InvalidTag

from stream.crypto.deks import DataKey
from stream.errors import DecryptError

__all__ = [
    "CIPHERTEXT_PREFIX",
    "CiphertextHeader",
    "decrypt_value",
    "encrypt_fields",
    "encrypt_many",
    "encrypt_value",
    "is_ciphertext",
    "pad_plaintext",
    "parse_ciphertext",
    "unpad_plaintext",
]

CIPHERTEXT_PREFIX = "sg1"

_NONCE_BYTES = 12
_TAG_BYTES = 16
_VERSION_B = CIPHERTEXT_PREFIX.encode("ascii")
_CIPHERTEXT_RE = re.compile(r"sg1\.([A-Za-z0-9_-]{1,64})\.(0|[1-9][0-9]{0,17})\.([A-Za-z0-9_-]+)")
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"===", b"==", b"=")
# Last base64 character allowed when the encoded length is 2 or 3 mod 4: the
# unused low bits must be zero (canonical encoding), else two strings decode alike.
_CANONICAL_LAST = ("", "", "AQgw", "AEIMQUYcgkosw048")
_MIN_BODY = _NONCE_BYTES + _TAG_BYTES
_AAD_HEAD_CACHE_MAX = 4096
_MEMO_KEY = "fields/sg1"
_NONCE_BLOCK = 4096  # most nonces drawn from os.urandom in one call (48 KiB)

_urandom = os.urandom
_dumps = orjson.dumps
_b2a = binascii.b2a_base64
_aad_heads: dict[tuple[str, str], bytes] = {}
_pad_tables: dict[tuple[int, ...], list[bytes]] = {}  # buckets -> _pad_table
_pad_tails: dict[int, bytes] = {}  # zeros -> 0x80 || 0x00 * zeros (one concatenation per padded value)


class CiphertextHeader(NamedTuple):
    """A parsed ciphertext string. ``body`` is the GCM ciphertext with its tag."""

    version: str
    key_id: str
    epoch: int
    nonce: bytes
    body: bytes


def _lp(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def _aad_head(schema_id: str, field_path: str) -> bytes:
    """``LP(version) | LP(schema_id) | LP(field_path)``, cached per field (schemas have few fields)."""
    if not isinstance(schema_id, str) or not isinstance(field_path, str):
        raise TypeError("schema_id and field_path must be str")
    head = _lp(_VERSION_B) + _lp(schema_id.encode("utf-8")) + _lp(field_path.encode("utf-8"))
    if len(_aad_heads) >= _AAD_HEAD_CACHE_MAX:
        _aad_heads.clear()
    _aad_heads[(schema_id, field_path)] = head
    return head


def _key_parts(key: DataKey) -> tuple[str, bytes]:
    """``(string header "sg1.{key_id}.{epoch}.", AAD tail LP(subject)|LP(epoch)|LP(key_id))``, memoized per key."""
    parts: tuple[str, bytes] | None = key._memo.get(_MEMO_KEY)
    if parts is None:
        if not _KEY_ID_RE.fullmatch(key.key_id) or type(key.epoch) is not int or key.epoch < 0:
            raise ValueError("data key has an invalid key_id or epoch")
        epoch = str(key.epoch)
        parts = (
            f"{CIPHERTEXT_PREFIX}.{key.key_id}.{epoch}.",
            _lp(key.subject.encode("utf-8")) + _lp(epoch.encode("ascii")) + _lp(key.key_id.encode("ascii")),
        )
        key._memo[_MEMO_KEY] = parts
    return parts


def pad_plaintext(plaintext: bytes, buckets: tuple[int, ...]) -> bytes:
    """``plaintext || 0x80 || 0x00*`` up to the smallest bucket >= len + 1 (beyond the largest
    bucket: the next multiple of it). ``buckets``: increasing positive sizes."""
    need = len(plaintext) + 1
    for size in buckets:
        if need <= size:
            break
    else:
        size = -(-need // buckets[-1]) * buckets[-1]
    tail = _pad_tails.get(size - need)
    if tail is None:
        tail = b"\x80" + bytes(size - need)
        if size - need < 1024:  # (at most 1024 tails, 0.5 MB)
            _pad_tails[size - need] = tail
    return plaintext + tail


def _pad_table(buckets: tuple[int, ...] | None) -> list[bytes] | None:
    """``table[n]``: what :func:`pad_plaintext` appends to ``n`` bytes, for ``n`` below the largest
    bucket (empty beyond 4 KiB buckets: :func:`pad_plaintext` then pads each value); None: no padding."""
    if not buckets:
        return None
    if buckets[-1] > 4096:
        return []
    table = _pad_tables.get(buckets)
    if table is None:
        table = [pad_plaintext(b"\x00" * n, buckets)[n:] for n in range(buckets[-1])]
        table = [_pad_tails.setdefault(len(t) - 1, t) for t in table]  # one object per tail length
        if len(_pad_tables) >= 64:
            _pad_tables.clear()
        _pad_tables[buckets] = table
    return table


def unpad_plaintext(padded: bytes) -> bytes:
    """Inverse of :func:`pad_plaintext`; unpadded JSON (never ending in 0x80/0x00) is returned as is."""
    if not padded or padded[-1] not in (0x00, 0x80):
        return padded
    body = padded.rstrip(b"\x00")
    if not body or body[-1] != 0x80:
        raise DecryptError()
    return body[:-1]


def encrypt_value(key: DataKey, value: Any, *, schema_id: str, field_path: str,
                  pad: tuple[int, ...] | None = None) -> str | None:
    """Encrypt one JSON value for ``(schema_id, field_path)`` under a person's data key; ``None`` stays ``None``.
    ``pad``: length buckets (module docstring).

    Raises ``TypeError`` (naming the field, never the value) if ``value`` is not
    JSON-serializable by orjson.
    """
    if value is None:
        return None
    try:
        plaintext = _dumps(value)
    except orjson.JSONEncodeError:
        raise TypeError(f"value of field {field_path!r} is not JSON-serializable") from None
    if pad:
        plaintext = pad_plaintext(plaintext, pad)
    head = _aad_heads.get((schema_id, field_path))
    if head is None:
        head = _aad_head(schema_id, field_path)
    header, tail = _key_parts(key)
    nonce = _urandom(_NONCE_BYTES)
    body = nonce + key.aead.encrypt(nonce, plaintext, head + tail)
    return header + _b2a(body, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


Fields = tuple[tuple[str, tuple[int, ...] | None], ...]


def encrypt_fields(key: DataKey, doc: dict[str, Any], fields: Fields, *, schema_id: str) -> None:
    """``doc[name] = encrypt_value(key, doc[name], schema_id=schema_id, field_path=name, pad=pad)`` for
    each ``(name, pad)`` of ``fields`` present and not null: the same ciphertexts, one call per event."""
    encrypt_many([(key, doc, fields)], schema_id=schema_id)


def encrypt_many(jobs: list[tuple[DataKey, dict[str, Any], Fields]], *, schema_id: str) -> None:
    """:func:`encrypt_fields` for each ``(key, doc, fields)`` of a batch: the same format and
    bindings; the batch's nonces come from one ``os.urandom`` call per 4,096 values (each 12-byte
    slice used once; the pool lives in this call only, so no state survives a fork or a batch)."""
    left = sum(len(fields) for _, _, fields in jobs)  # most nonces this batch can need
    pool, at, end = b"", 0, 0
    plans: dict[int, list[tuple[str, list[bytes] | None, tuple[int, ...], bytes]]] = {}
    for key, doc, fields in jobs:
        plan = plans.get(id(fields))
        if plan is None:
            plan = plans[id(fields)] = [(name, _pad_table(pad), pad or (), _aad_heads.get((schema_id, name))
                                         or _aad_head(schema_id, name)) for name, pad in fields]
        header, tail = _key_parts(key)
        encrypt = key.aead.encrypt
        for name, tails, pad, head in plan:
            value = doc.get(name)
            if value is None:
                left -= 1
                continue
            try:
                plaintext = _dumps(value)
            except orjson.JSONEncodeError:
                raise TypeError(f"value of field {name!r} is not JSON-serializable") from None
            if tails is not None:
                n = len(plaintext)
                plaintext = plaintext + tails[n] if n < len(tails) else pad_plaintext(plaintext, pad)
            if at == end:
                pool, at = _urandom(_NONCE_BYTES * min(left, _NONCE_BLOCK)), 0
                end = len(pool)
            left -= 1
            nonce = pool[at:at + _NONCE_BYTES]
            at += _NONCE_BYTES
            doc[name] = header + _b2a(nonce + encrypt(nonce, plaintext, head + tail), newline=False).translate(
                _TO_URLSAFE).rstrip(b"=").decode("ascii")


def parse_ciphertext(text: str) -> CiphertextHeader:
    """Split a ciphertext string into its parts; :class:`DecryptError` if it is not a canonical ``sg1`` string.

    Parsing authenticates nothing: use it to find the key, then :func:`decrypt_value`.
    """
    match = _CIPHERTEXT_RE.fullmatch(text) if type(text) is str else None
    if match is None:
        raise DecryptError()
    key_id, epoch, b64 = match.groups()
    rem = len(b64) % 4
    if rem == 1 or (rem and b64[-1] not in _CANONICAL_LAST[rem]):
        raise DecryptError()
    try:
        raw = binascii.a2b_base64(b64.encode("ascii").translate(_FROM_URLSAFE) + _PAD[rem], strict_mode=True)
    except (binascii.Error, ValueError):
        raise DecryptError() from None
    if len(raw) < _MIN_BODY:
        raise DecryptError()
    return CiphertextHeader(CIPHERTEXT_PREFIX, key_id, int(epoch), raw[:_NONCE_BYTES], raw[_NONCE_BYTES:])


def decrypt_value(key: DataKey, text: str | None, *, schema_id: str, field_path: str) -> Any:
    """Decrypt a value written by :func:`encrypt_value` for the same schema, field and person; ``None`` -> ``None``.

    Any failure raises :class:`DecryptError` with its default message. The key
    must be the one the header names (same ``key_id`` and ``epoch``); look it up
    with :func:`parse_ciphertext` and the data-key provider.
    """
    if text is None:
        return None
    try:
        parsed = parse_ciphertext(text)
        if parsed.key_id != key.key_id or parsed.epoch != key.epoch:
            raise DecryptError()
        head = _aad_heads.get((schema_id, field_path))
        if head is None:
            head = _aad_head(schema_id, field_path)
        plaintext = key.aead.decrypt(parsed.nonce, parsed.body, head + _key_parts(key)[1])
        return orjson.loads(unpad_plaintext(plaintext))
    except (DecryptError, InvalidTag, orjson.JSONDecodeError, TypeError, ValueError):
        raise DecryptError() from None


def is_ciphertext(value: Any) -> bool:
    """True if ``value`` is a well-formed ``sg1`` ciphertext string (structure only, not authenticity)."""
    try:
        parse_ciphertext(value)
    except DecryptError:
        return False
    return True
