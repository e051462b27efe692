"""Test helpers: private examples built from the synthetic clickstream, with their clean labels.

Each event's LDP attributes are perturbed with the clickstream policy's own
mechanisms (the oracles and numeric mechanisms of :class:`~stream.ldp.policy.LdpPolicy`)
and the session-purchase label with binary randomized response, then written as
``private-example.v1`` JSON and parsed back with the production parser. Unlike
the privatizer there is no per-person memoization here (every event gets fresh
noise): that is the i.i.d. case the corrected loss is derived for; memoization
only adds correlation, not bias. Test code only - production examples come from
the privatizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import hour_of_week
from stream.learn import EXAMPLE_SCHEMA, LABEL_NAME, PrivateExample, flip_probability
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator

__all__ = [
    "SOURCE_SCHEMA",
    "clickstream_policy",
    "private_examples",
    "randomized_labels",
    "real_privatizer_output",
]

# the LDP tests' helpers (gateway core + privatizer with in-memory stores), reused, not copied

SOURCE_SCHEMA = "clickstream-event.v1"


def clickstream_policy(epsilon: float) -> LdpPolicy:
    return LdpPolicy.from_schema(load_schema(SOURCE_SCHEMA), epsilon)


def randomized_labels(labels: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Binary randomized response: each bit flipped with probability 1 / (e^eps + 1)."""
    rho = flip_probability(epsilon)
    flip = rng.random(labels.shape[0]) < rho
    out: np.ndarray = np.where(flip, 1 - labels, labels).astype(np.int64)
    return out


def private_examples(
    n: int,
    *,
    epsilon: float,
    label_epsilon: float,
    seed: int,
    generator_seed: int | None = None,
) -> tuple[list[PrivateExample], np.ndarray]:
    """``n`` events of a seeded :class:`ClickstreamGenerator` as parsed private examples (features at
    ``epsilon``, label at ``label_epsilon``; ``math.inf`` keeps the labels clean) and the clean labels."""
    policy = clickstream_policy(epsilon)
    gen = ClickstreamGenerator(seed if generator_seed is None else generator_seed)
    events = list(gen.events(n))
    rng = np.random.default_rng(seed)
    clean = np.fromiter((gen.session_label(e["session_id"]) for e in events), dtype=np.int64, count=n)
    noisy = clean if math.isinf(label_epsilon) else randomized_labels(clean, label_epsilon, rng)
    reports: dict[str, list[Any]] = {}
    for attr in policy.attributes:
        if attr.oracle is not None:
            idx = [attr.index_of(e.get(attr.name)) for e in events]
            assert all(i is not None for i in idx), attr.name  # the synthetic events always map
            reports[attr.name] = attr.oracle.perturb(np.asarray(idx, dtype=np.int64), rng)
        else:
            assert attr.numeric is not None
            vals = np.asarray([attr.clamp(e.get(attr.name)) for e in events], dtype=np.float64)
            reports[attr.name] = [round(float(x), 6) for x in attr.numeric.perturb(vals, rng)]
    params = {a.name: a.params() for a in policy.attributes}
    label_eps = 1e9 if math.isinf(label_epsilon) else label_epsilon
    out: list[PrivateExample] = []
    for i, ev in enumerate(events):
        doc: dict[str, Any] = {
            "schema": EXAMPLE_SCHEMA,
            "source_schema": SOURCE_SCHEMA,
            "features": {name: {**params[name], "r": reports[name][i]} for name in params},
            "label": {
                "name": LABEL_NAME,
                "m": "GRR",
                "eps": min(label_eps, 100.0),
                "k": 2,
                "r": int(noisy[i]),
            },
        }
        how = hour_of_week(ev["ts"])
        if how is not None:
            doc["hour_of_week"] = how
        out.append(PrivateExample.from_dict(doc))
    return out, clean


def real_privatizer_output(
    n: int, *, epsilon: float, label_epsilon: float, seed: int
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Run ``n`` synthetic events through the real gateway core and privatizer: (protected event
    values, private-feature.v1 reports, private-example.v1 records). Uses the LDP tests' helpers."""
    from stream.crypto.keyring import Keyring
    from stream.ldp.labels import SessionLabeler
    from tests.support.ldp import make_privatizer, protected_records

    events = list(ClickstreamGenerator(seed, n_users=200).events(n))
    records = protected_records(events, Keyring.generate())
    priv = make_privatizer(epsilon=epsilon, budget=1000.0, label_epsilon=label_epsilon, seed=seed)
    res = priv.process(records)
    labeler = SessionLabeler(gap_ms=1, max_pending=10**6)
    labeler.add(res.examples)
    lres = priv.label_examples(labeler.release_all())
    return [r.value for r in records if r.value is not None], res.reports, lres.examples
