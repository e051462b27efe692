"""Federated learning across learner instances: signed local updates and their FedAvg merge (pure core).

N learner instances share one consumer group on ``features.private``; each learns on its own
partitions and, every ``learn_update_every`` examples or ``learn_update_interval_seconds``,
publishes a :class:`ModelUpdate` to ``models.updates``: the change of its parameters (weights and
intercept) since its *anchor* - the global version it last adopted, or its previous update -
with the number of examples that change came from and that global version (``base_version``).
One aggregator merges the updates into the next global version (:func:`fedavg`) and publishes it
as a signed snapshot; every instance adopts it (:func:`adopt`), keeping its unpublished steps.

Why deltas, not the local weights: an instance's anchor moves with every update it publishes, so
``global + delta`` counts each learned example once however the aggregator's rounds fall - an
update merged into version v, or still in flight when v was published, or based on an older
version (its delta applies to the newer weights: asynchronous SGD, counted in ``stale``).

What is averaged: the logistic regression's weights and intercept. Not averaged: AdaGrad's
per-feature sums of squared gradients - each instance keeps its own (an adoption replaces
weights and intercept only), and a global snapshot carries the optimizer state of the model the
aggregator resumed from (a learner restarting from it begins with that state).

Update layout (big-endian lengths): ``MAGIC (8) | header length (4) | header (JSON) | Ed25519
signature (64)`` over everything before it, context ``model-update.v1``, signed with the learner's
snapshot key (the context keeps an update from ever verifying as a snapshot, and back).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stream.crypto.signing import SIGNATURE_BYTES, SignatureError, public_key_id, sign, verify
from stream.errors import ModelUpdateError

__all__ = ["UPDATE_FORMAT", "ModelUpdate", "Parameters", "Round", "adopt", "fedavg", "max_epsilon", "merge_metrics"]

UPDATE_FORMAT = "streamgate-model-update.v1"
_CONTEXT = "model-update.v1"
_MAGIC = b"SGUPD\x00\x00\x01"
_LEN = struct.Struct(">I")
#: Most weights an update may carry (the clickstream model has about a hundred).
MAX_WEIGHTS = 100_000
_MAX_HEADER = 8 << 20


@dataclass(frozen=True)
class Parameters:
    """A linear model's parameters (or a change of them): weights by feature name, and the intercept.
    A feature absent from ``weights`` is 0 (River's zero initializer)."""

    weights: Mapping[str, float]
    intercept: float = 0.0

    def minus(self, other: Parameters) -> Parameters:
        """``self - other`` per feature."""
        w = dict(self.weights)
        for k, v in other.weights.items():
            w[k] = w.get(k, 0.0) - v
        return Parameters(w, self.intercept - other.intercept)

    def plus(self, other: Parameters, scale: float = 1.0) -> Parameters:
        """``self + scale * other`` per feature."""
        w = dict(self.weights)
        for k, v in other.weights.items():
            w[k] = w.get(k, 0.0) + scale * v
        return Parameters(w, self.intercept + scale * other.intercept)


def adopt(global_params: Parameters, current: Parameters, anchor: Parameters) -> Parameters:
    """An instance's parameters after it adopts a global version: the global ones plus its own steps
    not yet published (``current - anchor``). Its new anchor is ``global_params``."""
    return global_params.plus(current.minus(anchor))


def fedavg(base: Parameters, updates: Iterable[ModelUpdate], *, additive: bool = False) -> tuple[Parameters, int]:
    """FedAvg of one round: ``base + sum_i n_i * delta_i / sum_i n_i`` over the senders ``i`` of
    ``updates``, weighted by their example counts ``n_i``; returns (new parameters, examples merged).

    One sender's updates in a round are its successive progress, so they are summed first (their
    deltas and their counts) and that sender then counts once. When every update starts from
    ``base`` this is McMahan et al.'s FedAvg, ``sum_i n_i * w_i / sum_i n_i`` of the local weights.

    ``additive``: the parameters are sums of per-example contributions (joint naive Bayes' counts),
    so the merge is ``base + sum_i delta_i``: exactly the model one learner would have on the union."""
    by_sender: dict[str, tuple[Parameters, int]] = {}
    for u in updates:
        delta, n = by_sender.get(u.sender, (Parameters({}), 0))
        by_sender[u.sender] = (delta.plus(u.delta), n + u.examples)
    total = sum(n for _d, n in by_sender.values())
    if total <= 0:
        return base, 0
    merged = base
    for sender in sorted(by_sender):  # a fixed order: the same round gives the same floats
        delta, n = by_sender[sender]
        merged = merged.plus(delta, 1.0 if additive else n / total)
    return merged, total


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ModelUpdate:
    """One instance's local update (module docstring). ``seq`` counts the sender's updates (from 1);
    ``epsilon`` and ``metrics`` are the sender's (the epsilon of the reports it learned from, its
    progressive metrics) so the global snapshot can carry them."""

    model: str
    sender: str
    seq: int
    base_version: int
    examples: int
    delta: Parameters
    created_at: str
    epsilon: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    #: the sender's model class (``JointNaiveBayes``, ``PropensityModel``): merged only into a global model of it
    kind: str = ""

    def to_bytes(self, key: Ed25519PrivateKey) -> bytes:
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError("an update is signed with the learner's Ed25519 snapshot key")
        header = {
            "format": UPDATE_FORMAT, "model": self.model, "sender": self.sender, "seq": self.seq,
            "base_version": self.base_version, "examples": self.examples, "created_at": self.created_at,
            "weights": dict(self.delta.weights), "intercept": self.delta.intercept,
            "epsilon": self.epsilon, "metrics": {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()},
            "key_id": public_key_id(key),
        }
        if self.kind:
            header["kind"] = self.kind
        head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
        body = _MAGIC + _LEN.pack(len(head)) + head
        return body + sign(key, _CONTEXT, body)

    @classmethod
    def from_bytes(cls, data: bytes, key: Ed25519PublicKey | Ed25519PrivateKey) -> ModelUpdate:
        """Verify, then parse. :class:`ModelUpdateError` (one message per cause, no content) for a bad
        signature, a malformed update or a value a merge must not take (non-finite, no examples)."""
        pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ModelUpdateError("an update is bytes")
        data = bytes(data)
        fixed = len(_MAGIC) + _LEN.size
        if len(data) < fixed + SIGNATURE_BYTES or data[: len(_MAGIC)] != _MAGIC:
            raise ModelUpdateError("not a streamgate model update")
        body, tag = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
        try:
            verify(pub, _CONTEXT, body, tag)
        except SignatureError:
            raise ModelUpdateError("update authentication failed (tampered, or signed with another key)") from None
        (n,) = _LEN.unpack_from(body, len(_MAGIC))
        if n > _MAX_HEADER or fixed + n != len(body):
            raise ModelUpdateError("malformed update (length)")
        try:
            h = orjson.loads(body[fixed:])
        except orjson.JSONDecodeError:
            raise ModelUpdateError("malformed update (not JSON)") from None
        if not isinstance(h, dict) or h.get("format") != UPDATE_FORMAT:
            raise ModelUpdateError(f"not a {UPDATE_FORMAT} update")
        weights, intercept = h.get("weights"), h.get("intercept")
        seq, base, examples = (h.get(k) for k in ("seq", "base_version", "examples"))
        if not (isinstance(weights, dict) and len(weights) <= MAX_WEIGHTS and _finite(intercept)
                and all(isinstance(k, str) and _finite(v) for k, v in weights.items())):
            raise ModelUpdateError("malformed update (parameters)")
        if not (_count(seq) and _count(base) and _count(examples) and examples > 0):
            raise ModelUpdateError("malformed update (counts)")
        assert seq is not None and base is not None and examples is not None  # (narrowed above)
        if not (isinstance(h.get("model"), str) and isinstance(h.get("sender"), str)):
            raise ModelUpdateError("malformed update (names)")
        metrics = h.get("metrics")
        eps = h.get("epsilon")
        return cls(
            model=h["model"], sender=h["sender"], seq=seq, base_version=base, examples=examples,
            delta=Parameters({k: float(v) for k, v in weights.items()}, float(intercept)),
            created_at=str(h.get("created_at")),
            epsilon=eps if isinstance(eps, dict) else {},
            metrics={str(k): float(v) for k, v in metrics.items() if _finite(v)} if isinstance(metrics, dict) else {},
            kind=h["kind"] if isinstance(h.get("kind"), str) else "",
        )


def _count(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class Round:
    """The aggregator's open round: verified updates waiting to be merged, and when to merge.

    A round is *due* once every active sender (one whose update arrived within ``active_seconds``)
    has an update in it, or ``wait_seconds`` after its first update arrived, whichever comes
    first. Times are the caller's clock (seconds)."""

    def __init__(self, *, wait_seconds: float, active_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self.active_seconds = active_seconds
        self.pending: list[ModelUpdate] = []
        self.opened_at: float | None = None
        self.last_seen: dict[str, float] = {}

    def add(self, update: ModelUpdate, now: float) -> None:
        if not self.pending:
            self.opened_at = now
        self.pending.append(update)
        self.last_seen[update.sender] = now

    @property
    def examples(self) -> int:
        return sum(u.examples for u in self.pending)

    def active(self, now: float) -> set[str]:
        return {s for s, t in self.last_seen.items() if now - t <= self.active_seconds}

    def due(self, now: float) -> bool:
        if not self.pending or self.opened_at is None:
            return False
        if now - self.opened_at >= self.wait_seconds:
            return True
        return self.active(now) <= {u.sender for u in self.pending}

    def take(self) -> list[ModelUpdate]:
        """The round's updates; the next round starts empty (senders stay known)."""
        out, self.pending, self.opened_at = self.pending, [], None
        return out

    def clear(self) -> None:
        self.pending, self.opened_at = [], None
        self.last_seen.clear()


def merge_metrics(latest: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The global snapshot's metrics from each sender's latest progressive metrics: ``roc_auc`` and
    ``log_loss`` averaged weighted by each sender's ``n``, ``drifts`` summed, ``n`` summed."""
    out: dict[str, float] = {}
    total = sum(m.get("n", 0.0) for m in latest.values())
    for name in ("roc_auc", "log_loss"):
        vals = [(m[name], m.get("n", 0.0)) for m in latest.values() if name in m and math.isfinite(m[name])]
        wsum = sum(w for _v, w in vals)
        if wsum > 0:
            out[name] = sum(v * w for v, w in vals) / wsum
    out["n"] = float(total)
    out["drifts"] = float(sum(m.get("drifts", 0.0) for m in latest.values()))
    return out


def max_epsilon(infos: Sequence[Mapping[str, Any]]) -> tuple[float | None, dict[str, float]]:
    """(label epsilon, per-attribute feature epsilon): the largest of each over ``infos``."""
    label: float | None = None
    feats: dict[str, float] = {}
    for info in infos:
        v = info.get("label")
        if isinstance(v, int | float) and _finite(v):
            label = max(float(v), label or 0.0)
        f = info.get("features")
        if isinstance(f, Mapping):
            for k, e in f.items():
                if isinstance(k, str) and _finite(e):
                    feats[k] = max(float(e), feats.get(k, 0.0))
    return label, feats
