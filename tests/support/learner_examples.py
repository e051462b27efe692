"""Synthetic ``private-example.v1`` records for the learner's tests (tests only).

Events from :class:`stream.synth.ClickstreamGenerator`, each LDP attribute perturbed with the
schema policy's own oracle at ``eps`` (vectorized per attribute, like the privatizer, minus the
memoization), the label = the generator's clean session label through binary randomized
response at ``label_eps``. ``flip_after``: from that example on, the label is the opposite of
the clean one (``drift="invert"``: an abrupt concept drift) or a fair coin that no longer depends
on the features (``drift="noise"``). Returns the records and what a test needs to score a
model against the clean truth (labels, the clear events)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.ldp.grr import GRR
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import hour_of_week
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator

__all__ = ["Batch", "auc", "feature_report", "make_examples"]


@dataclass
class Batch:
    records: list[bytes]  # private-example.v1 JSON values
    clean: list[bool]  # the clean label of each record (before the flip and the RR)
    events: list[dict[str, Any]]  # the clear events they came from


def make_examples(n: int, *, seed: int, eps: float = 4.0, label_eps: float = 4.0, flip_after: int | None = None,
                  drift: str = "invert", n_users: int = 2000) -> Batch:
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), eps)
    gen = ClickstreamGenerator(seed=seed, n_users=n_users)
    events = list(gen.events(n))
    clean = [gen.session_label(ev["session_id"]) for ev in events]
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {}
    for a in policy.attributes:
        if a.oracle is not None:
            idx = [a.index_of(ev.get(a.name)) for ev in events]
            present = [i for i, v in enumerate(idx) if v is not None]
            reports = a.oracle.perturb(np.asarray([idx[i] for i in present], dtype=np.int64), rng)
            col: list[Any] = [None] * n
            for i, r in zip(present, reports, strict=True):
                col[i] = r
        else:
            assert a.numeric is not None
            out = a.numeric.perturb(np.asarray([a.clamp(ev.get(a.name)) for ev in events], dtype=np.float64), rng)
            col = [round(float(x), 6) for x in out]
        columns[a.name] = col
    coin = np.random.default_rng(seed + 1).random(n) < 0.5
    truth = [c if flip_after is None or i < flip_after else (not c if drift == "invert" else bool(coin[i]))
             for i, c in enumerate(clean)]
    labels = GRR(2, label_eps).perturb(np.asarray([int(y) for y in truth], dtype=np.int64), rng)
    records = []
    for i, ev in enumerate(events):
        features = {a.name: {**a.params(), "r": columns[a.name][i]} for a in policy.attributes
                    if columns[a.name][i] is not None}
        doc: dict[str, Any] = {"schema": "private-example.v1", "source_schema": policy.schema_name,
                               "features": features,
                               "label": {"name": "session_purchase", "m": "GRR", "eps": label_eps, "k": 2,
                                         "r": int(labels[i])}}
        how = hour_of_week(ev.get("ts"))
        if how is not None:
            doc["hour_of_week"] = how
        records.append(orjson.dumps(doc))
    return Batch(records, clean, events)


def feature_report(example: bytes) -> bytes:
    """The ``private-feature.v1`` report of an example (the same record without its label)."""
    doc = orjson.loads(example)
    doc["schema"] = "private-feature.v1"
    del doc["label"]
    return orjson.dumps(doc)


def auc(scores: list[float], labels: list[bool]) -> float:
    """Exact ROC AUC (Mann-Whitney, ties count one half)."""
    pairs = sorted(zip(scores, labels, strict=True))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    assert n_pos and n_neg
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid = (i + 1 + j) / 2.0  # mean 1-based rank of the tie group
        rank_sum += mid * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
