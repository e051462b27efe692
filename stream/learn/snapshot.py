"""Signed model snapshots: what ``models.snapshots`` carries and serving loads.

Why signed: a snapshot holds a pickled River model, and unpickling runs code.
A consumer must never unpickle bytes it has not authenticated, so the whole
snapshot is MACed (HMAC-SHA256) under a purpose key derived from the KEK
(``stream.crypto.keyring.derive_key(kek, "model-snapshot")``; the caller passes
the derived key, this module does no key management and no I/O), and
:meth:`ModelSnapshot.from_bytes` checks the tag - in constant time - before it
parses or unpickles anything. A flipped byte anywhere or a wrong key raises
:class:`~stream.errors.SnapshotError` and the payload is never loaded.

Layout (all lengths big-endian)::

    MAGIC (8 bytes b"SGSNAP\\x00\\x01") | header length (4) | header (JSON, UTF-8) | pickle | HMAC-SHA256 (32)

The header is public metadata - ``format``, ``name``, ``created_at`` (RFC 3339
UTC), ``examples_seen``, ``metrics``, ``epsilon`` (``{"label": eps, "features":
{attr: eps}, "note": ...}``), ``model_sha256`` (of the pickle) and ``key_id`` (a
public fingerprint of the signing key, so "wrong key" is diagnosable) - and
:meth:`ModelSnapshot.read_header` returns it without a key and without
unpickling (for ``streamgate model show``; it is *unauthenticated*, display
only). The epsilon is what the training data cost the people in it; the model
is post-processing of LDP reports and spends no further budget.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from stream.crypto.keyring import key_fingerprint
from stream.errors import SnapshotError
from stream.learn.model import PropensityModel

__all__ = ["EPSILON_NOTE", "SIGNING_PURPOSE", "SNAPSHOT_FORMAT", "ModelSnapshot"]

SNAPSHOT_FORMAT = "streamgate-model-snapshot.v1"
#: The HKDF purpose of the signing key (``derive_key(kek, SIGNING_PURPOSE)``).
SIGNING_PURPOSE = "model-snapshot"
EPSILON_NOTE = (
    "epsilon spent by the people whose reports trained the model (per person and epoch, memoized); "
    "the model is post-processing of local-DP reports and spends no further budget"
)

_MAGIC = b"SGSNAP\x00\x01"
_LEN = struct.Struct(">I")
_TAG_BYTES = 32
_MIN_KEY_BYTES = 16
_MAX_HEADER = 1 << 20


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_key(signing_key: bytes) -> bytes:
    if not isinstance(signing_key, bytes | bytearray) or len(signing_key) < _MIN_KEY_BYTES:
        raise ValueError(f"signing_key must be at least {_MIN_KEY_BYTES} bytes")
    return bytes(signing_key)


@dataclass(frozen=True)
class ModelSnapshot:
    """A model plus its public metadata (see the module docstring)."""

    name: str
    created_at: str
    examples_seen: int
    metrics: dict[str, float]
    epsilon: dict[str, Any]
    model: PropensityModel = field(repr=False)

    @classmethod
    def capture(
        cls,
        model: PropensityModel,
        *,
        metrics: Mapping[str, float],
        label_epsilon: float | None,
        feature_epsilon: Mapping[str, float],
        created_at: str | None = None,
    ) -> ModelSnapshot:
        """A snapshot of ``model`` now (name and examples seen from the model)."""
        eps: dict[str, Any] = {
            "label": None if label_epsilon is None else float(label_epsilon),
            "features": {str(k): float(v) for k, v in feature_epsilon.items()},
            "note": EPSILON_NOTE,
        }
        return cls(
            name=model.name,
            created_at=created_at or _utc_now(),
            examples_seen=model.examples_seen,
            metrics={str(k): float(v) for k, v in metrics.items()},
            epsilon=eps,
            model=model,
        )

    def header(self, key_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "name": self.name,
            "created_at": self.created_at,
            "examples_seen": self.examples_seen,
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()},
            "epsilon": self.epsilon,
        }
        if key_id is not None:
            out["key_id"] = key_id
        return out

    def to_bytes(self, signing_key: bytes) -> bytes:
        """The signed snapshot (layout in the module docstring)."""
        key = _check_key(signing_key)
        if not isinstance(self.model, PropensityModel):
            raise SnapshotError("a snapshot holds a PropensityModel")
        payload = pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)
        header = self.header(key_fingerprint(key))
        header["model_sha256"] = hashlib.sha256(payload).hexdigest()
        try:
            head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise SnapshotError(f"snapshot header is not JSON-serializable: {exc}") from None
        body = _MAGIC + _LEN.pack(len(head)) + head + payload
        return body + hmac.digest(key, body, "sha256")

    @staticmethod
    def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
        """(header, payload) of a snapshot whose tag has been stripped or ignored."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SnapshotError("a snapshot is bytes")
        data = bytes(data)
        fixed = len(_MAGIC) + _LEN.size
        if len(data) < fixed + _TAG_BYTES or data[: len(_MAGIC)] != _MAGIC:
            raise SnapshotError("not a streamgate model snapshot")
        (n,) = _LEN.unpack_from(data, len(_MAGIC))
        if n > _MAX_HEADER or fixed + n > len(data) - _TAG_BYTES:
            raise SnapshotError("malformed snapshot (header length)")
        try:
            header = orjson.loads(data[fixed : fixed + n])
        except orjson.JSONDecodeError:
            raise SnapshotError("malformed snapshot (header is not JSON)") from None
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"not a {SNAPSHOT_FORMAT} snapshot")
        return header, data[fixed + n : len(data) - _TAG_BYTES]

    @staticmethod
    def read_header(data: bytes) -> dict[str, Any]:
        """The public header, without a key and without unpickling. UNAUTHENTICATED: for display."""
        header, _payload = ModelSnapshot._split(data)
        return header

    @classmethod
    def from_bytes(cls, data: bytes, signing_key: bytes) -> ModelSnapshot:
        """Authenticate, then load. SnapshotError (and nothing unpickled) on a bad tag or format."""
        key = _check_key(signing_key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SnapshotError("a snapshot is bytes")
        data = bytes(data)
        if len(data) <= _TAG_BYTES:
            raise SnapshotError("not a streamgate model snapshot")
        body, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
        if not hmac.compare_digest(hmac.digest(key, body, "sha256"), tag):
            raise SnapshotError("snapshot authentication failed (tampered, or signed with another key)")
        # authenticated from here on: only now parse and unpickle
        header, payload = cls._split(data)
        if header.get("model_sha256") != hashlib.sha256(payload).hexdigest():
            raise SnapshotError("snapshot payload does not match its header")
        try:
            model = pickle.loads(payload)
        except Exception as exc:  # an authenticated but unloadable payload (e.g. a missing class)
            raise SnapshotError(f"snapshot payload could not be loaded ({type(exc).__name__})") from None
        if not isinstance(model, PropensityModel):
            raise SnapshotError("snapshot payload is not a PropensityModel")
        try:
            metrics = {str(k): (math.nan if v is None else float(v)) for k, v in header["metrics"].items()}
            return cls(
                name=str(header["name"]),
                created_at=str(header["created_at"]),
                examples_seen=int(header["examples_seen"]),
                metrics=metrics,
                epsilon=dict(header["epsilon"]),
                model=model,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise SnapshotError("malformed snapshot header") from None
