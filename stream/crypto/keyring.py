"""The KEK keyring: the master keys everything else hangs off.

A :class:`Keyring` is an immutable, ordered list of 32-byte key-encryption
keys (KEKs), each with a short id, oldest first:

* the **newest** KEK (:attr:`Keyring.primary_id`) wraps new data keys; every
  KEK in the ring can still unwrap, so rotation (:meth:`Keyring.rotated`) never
  strands an existing data key;
* the **oldest** KEK is the *root*: :meth:`Keyring.derive` derives every
  purpose key (token HMAC keys, ...) from it with HKDF-SHA256, one key per
  purpose (``info = b"streamgate/v1/" + purpose``), so no key is ever used for
  two purposes and tokens stay stable across KEK rotation. Consequence:
  dropping the root key from the ring re-keys every token (old and new tokens
  of the same person no longer match) - do that only on purpose.

Key material never appears in a ``repr``, an error message or a log line:
malformed input is reported by shape ("entry 2 is not base64 of 32 bytes"),
never by echoing it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stream.errors import KeyringError

if TYPE_CHECKING:
    from stream.config import Settings

__all__ = ["KEY_BYTES", "PSEUDONYM_PURPOSES", "ROLES", "WRAP_PURPOSE", "Keyring", "RoleKeyring", "derive_key",
           "key_fingerprint"]

#: Length of every KEK, in bytes (AES-256 / HMAC-SHA256 strength).
KEY_BYTES = 32

#: HKDF ``info`` namespace of purpose keys: ``_INFO_PREFIX + purpose``.
_INFO_PREFIX = b"streamgate/v1/"
#: HKDF ``info`` of key fingerprints. Deliberately outside ``_INFO_PREFIX`` so no
#: purpose passed to :func:`derive_key` can ever produce the fingerprint's pre-image.
_FINGERPRINT_INFO = b"streamgate/key-id"
_FILE_VERSION = 1
#: Version of a role credential file (:class:`RoleKeyring`).
_ROLE_FILE_VERSION = 2
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: HKDF purpose of a KEK's data-key wrapping key (used by :class:`stream.crypto.kms.LocalKMS`).
WRAP_PURPOSE = "dek-wrap"
#: HKDF purpose prefixes (``+ domain``) of tk2 person tokens: lookup id and token key (:mod:`.tokens`).
PSEUDONYM_PURPOSES = ("pseudonym-lookup/", "token2/")


class _RoleSpec(NamedTuple):
    wrap: bool  # the KEKs' wrapping keys (wrap and unwrap data keys: symmetric, so both)
    tokens: bool  # the token keys ``token/<domain>``, and the person domain's tk2 keys (pseudonymize identifiers)
    purposes: tuple[str, ...]  # other purpose keys (Ed25519 seeds are ``sign/<name>``)
    public: tuple[str, ...]  # Ed25519 public keys of these signers


#: What each role's credential holds (``streamgate keys roles``); see the README, "Key roles".
ROLES: dict[str, _RoleSpec] = {
    # ldp-ledger: to exhaust the ledgers of a person returning after an erasure (stream.ldp.ledger)
    "gateway": _RoleSpec(True, True, ("dek-id", "dlq-digest", "ldp-ledger"), ()),
    "privatizer": _RoleSpec(False, False, ("ldp-memo", "ldp-ledger"), ()),
    "reader": _RoleSpec(True, False, ("dek-id",), ()),
    "eraser": _RoleSpec(False, False, ("sign/erasure",), ("erasure",)),
    "shredder": _RoleSpec(False, True, ("sign/receipt",), ("erasure", "receipt")),
    "learner": _RoleSpec(False, False, ("sign/snapshot",), ("snapshot",)),
    "verifier": _RoleSpec(False, False, (), ("snapshot", "receipt")),
}

_SETUP_HINT = (
    "no master key configured: run `streamgate keys generate` (it writes <state_dir>/keyring.json, "
    "found there by default), or set STREAMGATE_MASTER_KEY (base64 of 32 bytes) or "
    "STREAMGATE_MASTER_KEY_FILE (or STREAMGATE_KEY_FILE: a role credential from `streamgate keys roles`)"
)


def default_keyring_path(settings: Settings) -> Path:
    """Where ``streamgate keys generate`` writes, and where a process looks when no key is configured."""
    return settings.state_dir / "keyring.json"


def _hkdf(key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def derive_key(key: bytes, purpose: str, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of ``key`` for one ``purpose`` (``info = b"streamgate/v1/" + purpose``, no salt).

    The building block of :meth:`Keyring.derive` (root key) and of the per-KEK
    wrapping keys of :class:`stream.crypto.kms.LocalKMS`. Distinct purposes give
    independent keys, so a key is never reused across purposes.
    """
    if not isinstance(purpose, str) or not purpose:
        raise ValueError("purpose must be a non-empty string")
    if not 16 <= length <= 64:
        raise ValueError("derived key length must be between 16 and 64 bytes")
    return _hkdf(key, _INFO_PREFIX + purpose.encode("utf-8"), length)


def key_fingerprint(key: bytes) -> str:
    """A short, public id of a key: ``"k"`` + 10 hex chars of SHA-256(HKDF(key, info "streamgate/key-id")).

    Hashing an HKDF output (not the key itself) means the id reveals nothing
    usable about the key; 40 bits are plenty to tell a handful of KEKs apart.
    """
    return "k" + hashlib.sha256(_hkdf(key, _FINGERPRINT_INFO, KEY_BYTES)).hexdigest()[:10]


def _decode_key(text: str, what: str) -> bytes:
    """Strict base64 (standard or URL-safe alphabet) of exactly 32 bytes; the message never echoes ``text``."""
    text = text.strip()
    text += "=" * (-len(text) % 4)  # tolerate unpadded input
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{what} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyringError(f"{what} must decode to {KEY_BYTES} bytes")
    return raw


def _check_id(key_id: Any, what: str) -> str:
    if not isinstance(key_id, str) or not _ID_RE.fullmatch(key_id):
        raise KeyringError(f"{what}: key id must be 1-64 characters of [A-Za-z0-9_-]")
    return key_id


class _Entry(NamedTuple):
    key_id: str
    key: bytes
    created: str | None


class Keyring:
    """An immutable, ordered set of KEKs (oldest first). See the module docstring."""

    __slots__ = ("_by_id", "_derived", "_entries", "_lock")

    _entries: tuple[_Entry, ...]
    _by_id: dict[str, bytes]
    _derived: dict[tuple[str, int], bytes]
    _lock: threading.Lock

    def __init__(self, entries: Iterable[tuple[str, bytes, str | None]]) -> None:
        """Build a keyring from ``(key_id, key, created_iso_or_None)`` triples, oldest first.

        Prefer :meth:`generate`, :meth:`parse`, :meth:`load` or :meth:`from_settings`.
        """
        items = tuple(_Entry(*e) for e in entries)
        if not items:
            raise KeyringError("a keyring needs at least one key")
        by_id: dict[str, bytes] = {}
        for n, entry in enumerate(items, 1):
            _check_id(entry.key_id, f"key {n}")
            if not isinstance(entry.key, bytes) or len(entry.key) != KEY_BYTES:
                raise KeyringError(f"key {n} must be {KEY_BYTES} bytes")
            if entry.key_id in by_id:
                raise KeyringError(f"key {n}: duplicate key id")
            if entry.key in by_id.values():
                raise KeyringError(f"key {n}: the same key material appears twice")
            by_id[entry.key_id] = entry.key
        object.__setattr__(self, "_entries", items)
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_derived", {})
        object.__setattr__(self, "_lock", threading.Lock())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Keyring is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Keyring is immutable")

    def __reduce__(self) -> Any:
        # Refuse pickling: a pickled keyring is key material written somewhere nobody chose.
        raise TypeError("Keyring cannot be pickled; use Keyring.save()")

    # --- constructors ------------------------------------------------------------

    @classmethod
    def generate(cls) -> Keyring:
        """A new keyring holding one fresh random KEK (``os.urandom(32)``)."""
        key = os.urandom(KEY_BYTES)
        return cls([(key_fingerprint(key), key, _now_iso())])

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Parse ``STREAMGATE_MASTER_KEY``: plain base64 of 32 bytes (id = its fingerprint),
        or ``"id1:b64,id2:b64"`` (oldest first).

        Raises :class:`KeyringError` on anything malformed; the message describes the
        problem by position, never by content.
        """
        if not isinstance(text, str):
            raise KeyringError("master key must be a string")
        text = text.strip()
        if not text:
            raise KeyringError("master key is empty")
        if ":" not in text and "," not in text:
            key = _decode_key(text, "master key")
            return cls([(key_fingerprint(key), key, None)])
        entries: list[tuple[str, bytes, str | None]] = []
        for n, part in enumerate(text.split(","), 1):
            key_id, sep, b64 = part.strip().partition(":")
            if not sep:
                raise KeyringError(f"master key entry {n} must look like 'id:base64'")
            entries.append(
                (_check_id(key_id, f"master key entry {n}"), _decode_key(b64, f"master key entry {n}"), None)
            )
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Load a keyring file (``{"version": 1, "keys": [{"id", "key", "created"}, ...]}``, oldest first)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyringError(
                f"keyring file {path} does not exist (run `streamgate keys generate`)"
            ) from None
        except OSError as exc:
            raise KeyringError(f"keyring file {path} cannot be read ({type(exc).__name__})") from None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeyringError(f"keyring file {path} is not valid JSON") from None
        if isinstance(doc, dict) and doc.get("version") == _ROLE_FILE_VERSION:
            return RoleKeyring.from_doc(doc, str(path))
        if not isinstance(doc, dict) or doc.get("version") != _FILE_VERSION:
            raise KeyringError(f"keyring file {path} is not a version {_FILE_VERSION} keyring")
        keys = doc.get("keys")
        if not isinstance(keys, list) or not keys:
            raise KeyringError(f"keyring file {path} holds no keys")
        entries: list[tuple[str, bytes, str | None]] = []
        for n, item in enumerate(keys, 1):
            what = f"keyring file {path}, key {n}"
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise KeyringError(f"{what} must be an object with 'id' and 'key'")
            created = item.get("created")
            if created is not None and not isinstance(created, str):
                raise KeyringError(f"{what}: 'created' must be an ISO timestamp string")
            entries.append((_check_id(item.get("id"), what), _decode_key(item["key"], what), created))
        return cls(entries)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """The configured keyring: ``settings.master_key``, else ``settings.master_key_file``, else the role
        credential ``settings.key_file`` (a :class:`RoleKeyring`), else :class:`KeyringError` telling the
        user how to configure one (fail closed: no key, no service)."""
        if settings.master_key is not None:
            return cls.parse(settings.master_key.get_secret_value())
        if settings.master_key_file is not None:
            return cls.load(settings.master_key_file)
        if settings.key_file is not None:
            return cls.load(settings.key_file)
        default = default_keyring_path(settings)
        if default.exists():
            return cls.load(default)
        raise KeyringError(_SETUP_HINT)

    # --- persistence -------------------------------------------------------------

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the keyring to ``path`` atomically, readable by the owner only (mode 0600).

        The file is written to a temporary sibling created with mode 0600 (never
        briefly world-readable), fsynced, then linked/renamed into place, so a
        crash leaves either the old file or the new one. Refuses to replace an
        existing file unless ``overwrite=True``: replacing a keyring destroys keys.
        """
        doc = {
            "version": _FILE_VERSION,
            "keys": [
                {"id": e.key_id, "key": base64.b64encode(e.key).decode("ascii"), "created": e.created}
                for e in self._entries
            ],
        }
        _write_private(Path(path), doc, overwrite=overwrite)

    # --- rotation and access --------------------------------------------------------

    def rotated(self) -> Keyring:
        """A new keyring with one more, newest KEK (which then wraps new data keys).

        Old KEKs stay so existing wrapped keys still unwrap; the root (oldest) key,
        hence every derived purpose key and every token, is unchanged.
        """
        while True:
            key = os.urandom(KEY_BYTES)
            key_id = key_fingerprint(key)
            if key_id not in self._by_id:
                break
        return Keyring([*self._entries, (key_id, key, _now_iso())])

    @property
    def primary_id(self) -> str:
        """Id of the newest KEK, the one that wraps new data keys."""
        return self._entries[-1].key_id

    @property
    def root_id(self) -> str:
        """Id of the oldest KEK, the root of every derived purpose key."""
        return self._entries[0].key_id

    @property
    def ids(self) -> tuple[str, ...]:
        """All KEK ids, oldest first."""
        return tuple(e.key_id for e in self._entries)

    def kek(self, key_id: str) -> bytes:
        """The raw KEK with this id; :class:`KeyringError` if the ring does not hold it."""
        try:
            return self._by_id[key_id]
        except (KeyError, TypeError):
            raise KeyringError("the keyring does not hold the requested key id") from None

    @property
    def role(self) -> str | None:
        """The role of a :class:`RoleKeyring` credential; ``None`` for the full master keyring."""
        return None

    def kek_derive(self, key_id: str, purpose: str) -> bytes:
        """``derive_key(kek(key_id), purpose)``: a per-KEK key (the DEK wrapping key of :mod:`.kms`)."""
        return derive_key(self.kek(key_id), purpose)

    def public_key(self, name: str) -> bytes:
        """Raw Ed25519 public key (32 bytes) of signer ``name`` (seed ``derive("sign/" + name)``)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        seed = self.derive("sign/" + name)
        return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def derive(self, purpose: str, length: int = KEY_BYTES) -> bytes:
        """The key for ``purpose``: HKDF-SHA256 of the root (oldest) KEK, ``info = b"streamgate/v1/" + purpose``.

        One key per purpose, never shared across purposes. Stable across
        :meth:`rotated` (rotating the *root* key re-keys everything derived,
        including tokens). Results are cached per ``(purpose, length)``.
        """
        cache_key = (purpose, length)
        key = self._derived.get(cache_key)
        if key is None:
            key = derive_key(self._entries[0].key, purpose, length)
            with self._lock:
                self._derived.setdefault(cache_key, key)
        return key

    def for_role(self, role: str, *, token_domains: Iterable[str] = (),
                 person_domain: str | None = None) -> RoleKeyring:
        """The credential of ``role`` (:data:`ROLES`): only the derived keys that role needs, never a raw KEK.

        A role with token keys gets ``token/<d>`` for each of ``token_domains`` and, for
        ``person_domain``, the keys of tk2 person tokens (:class:`stream.crypto.tokens.PseudonymKeys`).
        Derived deterministically, so a role credential and the master keyring interoperate (same
        tokens, same wrapped keys, same signing keys)."""
        spec = ROLES.get(role)
        if spec is None:
            raise KeyringError(f"unknown role (one of {', '.join(ROLES)})")
        purposes = list(spec.purposes)
        if spec.tokens:
            purposes += ["token/" + d for d in token_domains]
            if person_domain:
                purposes += [p + person_domain for p in PSEUDONYM_PURPOSES]
        return RoleKeyring(
            role,
            root_id=self.root_id,
            kek_ids=self.ids if spec.wrap else (),
            kek_keys={(i, WRAP_PURPOSE): self.kek_derive(i, WRAP_PURPOSE) for i in self.ids} if spec.wrap else {},
            purpose_keys={p: self.derive(p) for p in purposes},
            public_keys={n: self.public_key(n) for n in spec.public},
        )

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, primary={self.primary_id!r})"


class RoleKeyring(Keyring):
    """A role's credential: a subset of the keys a master :class:`Keyring` derives (see :data:`ROLES`).

    It holds no raw KEK, so it cannot derive anything it was not given: asking for a key outside the
    role raises :class:`KeyringError` naming the purpose (never key material). Loaded by
    :meth:`Keyring.load` from a version-2 file, so ``STREAMGATE_MASTER_KEY_FILE`` may point at one.
    """

    __slots__ = ("_kek_ids", "_kek_keys", "_public_keys", "_purpose_keys", "_role", "_root_id")

    _role: str
    _root_id: str
    _kek_ids: tuple[str, ...]
    _kek_keys: dict[tuple[str, str], bytes]
    _purpose_keys: dict[str, bytes]
    _public_keys: dict[str, bytes]

    def __init__(self, role: str, *, root_id: str, kek_ids: Iterable[str], kek_keys: dict[tuple[str, str], bytes],
                 purpose_keys: dict[str, bytes], public_keys: dict[str, bytes]) -> None:
        if role not in ROLES:
            raise KeyringError(f"unknown role (one of {', '.join(ROLES)})")
        for k in [*kek_keys.values(), *purpose_keys.values(), *public_keys.values()]:
            if not isinstance(k, bytes) or len(k) != KEY_BYTES:
                raise KeyringError(f"every key of a role credential must be {KEY_BYTES} bytes")
        for name, value in (("_role", role), ("_root_id", _check_id(root_id, "root")),
                            ("_kek_ids", tuple(_check_id(i, "kek") for i in kek_ids)),
                            ("_kek_keys", dict(kek_keys)), ("_purpose_keys", dict(purpose_keys)),
                            ("_public_keys", dict(public_keys))):
            object.__setattr__(self, name, value)

    @property
    def role(self) -> str:
        return self._role

    @property
    def ids(self) -> tuple[str, ...]:
        return self._kek_ids

    @property
    def primary_id(self) -> str:
        if not self._kek_ids:
            raise KeyringError(f"the {self._role} credential holds no key-encryption key")
        return self._kek_ids[-1]

    @property
    def root_id(self) -> str:
        return self._root_id

    def _missing(self, what: str) -> KeyringError:
        return KeyringError(f"the {self._role} credential does not hold the {what} key "
                            "(a command needs its own role's credential, or the master key)")

    def kek(self, key_id: str) -> bytes:
        raise self._missing("raw KEK")

    def kek_derive(self, key_id: str, purpose: str) -> bytes:
        try:
            return self._kek_keys[(key_id, purpose)]
        except (KeyError, TypeError):
            raise self._missing(f"{purpose!r}") from None

    def derive(self, purpose: str, length: int = KEY_BYTES) -> bytes:
        key = self._purpose_keys.get(purpose)
        if key is None or length != KEY_BYTES:
            raise self._missing(f"{purpose!r}")
        return key

    def public_key(self, name: str) -> bytes:
        key = self._public_keys.get(name)
        if key is not None:
            return key
        if "sign/" + name in self._purpose_keys:
            return super().public_key(name)
        raise self._missing(f"{name!r} public")

    def rotated(self) -> Keyring:
        raise KeyringError("rotate the master keyring, then re-issue the role credentials")

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the credential (mode 0600, atomically; as :meth:`Keyring.save`)."""
        b64 = lambda k: base64.b64encode(k).decode("ascii")  # noqa: E731
        doc = {
            "version": _ROLE_FILE_VERSION,
            "role": self._role,
            "root_id": self._root_id,
            "keks": [{"id": i, WRAP_PURPOSE: b64(self._kek_keys[(i, WRAP_PURPOSE)])} for i in self._kek_ids],
            "keys": {p: b64(k) for p, k in sorted(self._purpose_keys.items())},
            "public": {n: b64(k) for n, k in sorted(self._public_keys.items())},
        }
        _write_private(Path(path), doc, overwrite=overwrite)

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str) -> RoleKeyring:
        """Parse a version-2 credential file (messages name the position, never the content)."""
        try:
            keks = doc.get("keks", [])
            kek_ids = [str(k["id"]) for k in keks]
            kek_keys = {(str(k["id"]), WRAP_PURPOSE): _decode_key(k[WRAP_PURPOSE], f"{where}, kek {n}")
                        for n, k in enumerate(keks, 1)}
            purpose_keys = {str(p): _decode_key(v, f"{where}, key {p!r}") for p, v in doc.get("keys", {}).items()}
            public_keys = {str(n): _decode_key(v, f"{where}, public key {n!r}")
                           for n, v in doc.get("public", {}).items()}
            return cls(str(doc["role"]), root_id=str(doc["root_id"]), kek_ids=kek_ids, kek_keys=kek_keys,
                       purpose_keys=purpose_keys, public_keys=public_keys)
        except (KeyError, TypeError, AttributeError):
            raise KeyringError(f"{where} is not a valid role credential file") from None

    def __repr__(self) -> str:
        return f"RoleKeyring(role={self._role!r}, keks={self._kek_ids!r})"


def _write_private(path: Path, doc: dict[str, Any], *, overwrite: bool) -> None:
    """Write ``doc`` as JSON to ``path`` atomically with mode 0600 (see :meth:`Keyring.save`)."""
    data = (json.dumps(doc, indent=2) + "\n").encode("ascii")
    if not overwrite and path.exists():
        raise KeyringError(f"refusing to overwrite existing keyring file {path} (`streamgate keys generate --force`, or overwrite=True)")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise KeyringError(f"cannot write keyring file {path} ({type(exc).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # in case of an unusual umask / ACL default
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared meanwhile: no silent clobbering.
            os.link(tmp, path)
    except FileExistsError:
        raise KeyringError(
            f"refusing to overwrite existing keyring file {path} (`streamgate keys generate --force`, or overwrite=True)"
        ) from None
    except OSError as exc:
        raise KeyringError(f"cannot write keyring file {path} ({type(exc).__name__})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _fsync_dir(directory: Path) -> None:
    """Persist a rename/link (best effort; not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
