"""Signed model snapshots: what ``models.snapshots`` carries and serving loads.

Two independent defences, because a snapshot holds a pickled River model:

* **Signature (who made it).** The learner signs the whole snapshot with its Ed25519
  snapshot key (:mod:`stream.crypto.signing`, signer ``snapshot``: seed derived from the
  master keyring, or held by the learner credential alone); loaders hold only the
  *public* key, so a process that can verify snapshots cannot forge them (the old HMAC
  key let every worker that could check a snapshot also sign one).
  :meth:`ModelSnapshot.from_bytes` verifies before it parses or unpickles anything.
* **Restricted unpickling (what it may do).** Even a validly signed payload is loaded
  with an unpickler whose ``find_class`` resolves only an exact allow-list of the model's
  classes (:data:`ALLOWED_CLASSES`: the River pipeline, regression, optimizers and
  scaler, ``collections`` containers, ``builtins.float``, streamgate's model classes) -
  no functions, no dotted lookups, nothing else. A payload naming anything else
  (``os.system``, ``builtins.eval``, ...) raises :class:`~stream.errors.SnapshotError`
  before that object is created: a leaked learner key yields a wrong model, never code
  execution.

Layout (all lengths big-endian)::

    MAGIC (8 bytes b"SGSNAP\x00\x02") | header length (4) | header (JSON, UTF-8) | pickle | Ed25519 signature (64)

The signature covers everything before it (context ``model-snapshot.v2``). The header
is public metadata - ``format``, ``name``, ``created_at`` (RFC 3339 UTC),
``examples_seen``, ``metrics``, ``epsilon`` (``{"label": eps, "features": {attr: eps},
"note": ...}``), ``federation`` (a federated global model only: its ``version`` and provenance), ``model_sha256`` (of the pickle) and ``key_id`` (public id of the
signing key, so "wrong key" is diagnosable) - and :meth:`ModelSnapshot.read_header`
returns it without a key and without unpickling (for ``streamgate model show``; it is
*unauthenticated*, display only). The epsilon is what the training data cost the people
in it; the model is post-processing of LDP reports and spends no further budget.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stream.crypto.signing import SIGNATURE_BYTES, SignatureError, public_key_id, sign, verify
from stream.errors import SnapshotError
from stream.learn.joint import JointNaiveBayes
from stream.learn.model import PropensityModel

_MODELS = (PropensityModel, JointNaiveBayes)

__all__ = ["ALLOWED_CLASSES", "EPSILON_NOTE", "SIGNING_PURPOSE", "SNAPSHOT_FORMAT", "ModelSnapshot"]

SNAPSHOT_FORMAT = "streamgate-model-snapshot.v2"
#: The signer name of the snapshot key (:func:`stream.crypto.signing.signing_key`; seed ``sign/snapshot``).
SIGNING_PURPOSE = "snapshot"
#: Exactly the globals a snapshot's pickle may reference (module, name); everything else is refused.
ALLOWED_CLASSES: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "float"), ("builtins", "int"), ("builtins", "set"), ("builtins", "frozenset"),
    ("collections", "Counter"), ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("river._river_rust.vectordict", "VectorDict"),
    ("river.compose.pipeline", "Pipeline"),
    ("river.linear_model.log_reg", "LogisticRegression"),
    ("river.optim.ada_grad", "AdaGrad"),
    ("river.optim.sgd", "SGD"),
    ("river.optim.initializers", "Zeros"),
    ("river.optim.schedulers", "Constant"),
    ("river.optim.losses", "Log"),
    ("river.preprocessing.scale", "StandardScaler"),
    ("river.stats.mean", "Mean"),
    ("river.stats.var", "Var"),
    ("stream.learn.features", "FeatureMap"),
    ("stream.learn.losses", "CorrectedLog"),
    ("stream.learn.model", "PropensityModel"),
    ("stream.learn.joint", "JointNaiveBayes"),
    ("stream.ldp.examples", "ExampleSpec"),
    ("stream.ldp.examples", "ExampleAttribute"),
})
_CONTEXT = "model-snapshot.v2"
EPSILON_NOTE = (
    "epsilon spent by the people whose reports trained the model (per person and epoch, memoized); "
    "the model is post-processing of local-DP reports and spends no further budget"
)

_MAGIC = b"SGSNAP\x00\x02"
_LEN = struct.Struct(">I")
_TAG_BYTES = SIGNATURE_BYTES
_MAX_HEADER = 1 << 20


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_CLASSES`, and only classes: any other global is refused unloaded."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_CLASSES:
            raise _RefusedGlobal("global not allowed in a model snapshot")
        obj = super().find_class(module, name)
        if not isinstance(obj, type):
            raise _RefusedGlobal("global not allowed in a model snapshot")
        return obj


def _unpickle(payload: bytes) -> Any:
    """Load an authenticated payload with the restricted unpickler (never ``pickle.loads``)."""
    return _RestrictedUnpickler(io.BytesIO(payload)).load()


def _verify_key(key: Ed25519PublicKey | Ed25519PrivateKey) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError("verify_key must be an Ed25519 public key")
    return key


@dataclass(frozen=True)
class ModelSnapshot:
    """A model plus its public metadata (see the module docstring)."""

    name: str
    created_at: str
    examples_seen: int
    metrics: dict[str, float]
    epsilon: dict[str, Any]
    model: PropensityModel | JointNaiveBayes = field(repr=False)
    #: A federated global model's provenance (``stream.apps.federated``): ``version``, the update
    #: offsets it covers, the updates and senders merged; None for a single learner's snapshot.
    federation: dict[str, Any] | None = None

    @property
    def version(self) -> int:
        """The global version (federated learning), 0 for a single learner's snapshot."""
        v = (self.federation or {}).get("version")
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

    @classmethod
    def capture(
        cls,
        model: PropensityModel | JointNaiveBayes,
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
        if self.federation is not None:
            out["federation"] = self.federation
        if key_id is not None:
            out["key_id"] = key_id
        return out

    def to_bytes(self, signing_key: Ed25519PrivateKey) -> bytes:
        """The signed snapshot (layout in the module docstring)."""
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519 private key (the learner's snapshot key)")
        if not isinstance(self.model, _MODELS):
            raise SnapshotError("a snapshot holds a PropensityModel or a JointNaiveBayes")
        payload = pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)
        header = self.header(public_key_id(signing_key))
        header["model_sha256"] = hashlib.sha256(payload).hexdigest()
        try:
            head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise SnapshotError(f"snapshot header is not JSON-serializable: {exc}") from None
        body = _MAGIC + _LEN.pack(len(head)) + head + payload
        return body + sign(signing_key, _CONTEXT, body)

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
    def from_bytes(cls, data: bytes, verify_key: Ed25519PublicKey | Ed25519PrivateKey) -> ModelSnapshot:
        """Verify, then load with the restricted unpickler. SnapshotError (and nothing unpickled) on a bad
        signature or format; SnapshotError (and nothing outside :data:`ALLOWED_CLASSES` created) on a
        payload that references anything else. ``verify_key``: the public key (a private key is accepted
        and reduced to its public half)."""
        key = _verify_key(verify_key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SnapshotError("a snapshot is bytes")
        data = bytes(data)
        if len(data) <= _TAG_BYTES:
            raise SnapshotError("not a streamgate model snapshot")
        body, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
        try:
            verify(key, _CONTEXT, body, tag)
        except SignatureError:
            raise SnapshotError("snapshot authentication failed (tampered, or signed with another key)") from None
        # authenticated from here on: only now parse and unpickle
        header, payload = cls._split(data)
        if header.get("model_sha256") != hashlib.sha256(payload).hexdigest():
            raise SnapshotError("snapshot payload does not match its header")
        try:
            model = _unpickle(payload)
        except _RefusedGlobal:
            raise SnapshotError("snapshot payload refused: it references a global outside the allow-list") from None
        except Exception as exc:  # an authenticated but unloadable payload
            raise SnapshotError(f"snapshot payload could not be loaded ({type(exc).__name__})") from None
        if not isinstance(model, _MODELS):
            raise SnapshotError("snapshot payload is not a PropensityModel or a JointNaiveBayes")
        try:
            metrics = {str(k): (math.nan if v is None else float(v)) for k, v in header["metrics"].items()}
            return cls(
                name=str(header["name"]),
                created_at=str(header["created_at"]),
                examples_seen=int(header["examples_seen"]),
                metrics=metrics,
                epsilon=dict(header["epsilon"]),
                model=model,
                federation=dict(header["federation"]) if isinstance(header.get("federation"), dict) else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise SnapshotError("malformed snapshot header") from None
