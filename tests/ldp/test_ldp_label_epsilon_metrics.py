"""The label's ε is counted in the privatizer's metrics (``streamgate_ldp_epsilon_spent_total``, attribute
``session_purchase``) once per paid charge, like the feature reports' ε: every ε the ledger was charged is
in the metrics. Before, the prepaid label ε (joint-nb: one example per person-epoch; logistic: the label of
each reported event) was charged on the ledger but counted as 0 (the labelled examples carry none).
The engine's process/finish are called directly over an in-memory ledger (no broker)."""

from __future__ import annotations

import os
import time

import numpy as np
import orjson
import pytest

from stream.apps.privatizer import PrivatizerEngine
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.engine import Record
from stream.ldp.examples import ExampleSpec, JointExamples
from stream.ldp.labels import LABEL_NAME
from stream.ldp.ledger import MICRO, Charge, MemoryLedgerStore
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import Privatizer
from stream.ops.metrics import WorkerMetrics
from stream.schema import load_schema
from tests.support.ldp import SCHEMA, make_privatizer, protect

LABEL_EPS, CAP = 4.0, 12.0


def _event(i: int, user: str) -> dict:
    return {"event_id": f"00000000-0000-4000-8000-{i:012d}", "event_type": "product_view",
            "ts": "2024-01-03T10:15:00Z", "user_id": user, "session_id": f"s-{user}", "page": "/p/1",
            "category": "books", "device": "mobile", "country": "DE", "price": 19.5}


def _joint(store: MemoryLedgerStore) -> Privatizer:
    schema = load_schema(SCHEMA)
    policy = LdpPolicy.from_schema(schema, 1.0)
    rng = np.random.default_rng(5)
    return Privatizer(policy, store, memo_key=os.urandom(32), subject_field=schema.subject_field,
                      budget_epsilon=CAP, epoch_seconds=86400, retention_seconds=30 * 86400, rng=rng, shuffle_seed=5,
                      examples=JointExamples(ExampleSpec.from_policy(policy), LABEL_EPS, rng,
                                             subject_field=schema.subject_field))


@pytest.mark.parametrize("model", ["joint-nb", "logistic"])
def test_the_label_epsilon_charged_is_counted_once_per_paid_charge(model: str) -> None:
    keyring = Keyring.generate()
    store = MemoryLedgerStore()
    priv = (_joint(store) if model == "joint-nb"
            else make_privatizer(budget=CAP, seed=5, store=store, label_epsilon=LABEL_EPS))
    settings = Settings(kafka_bootstrap="127.0.0.1:9", learn_model=model, learn_label_epsilon=LABEL_EPS,
                        learn_session_gap_seconds=1.0)
    metrics = WorkerMetrics("privatizer")
    engine = PrivatizerEngine(settings, priv, bootstrap="127.0.0.1:9", metrics=metrics)
    now_ms = int(time.time() * 1000)
    # 20 people with 6 events each; 5 more whose ledgers are nearly full (1 left): no example, no report
    events = [_event(i, f"p{i // 6}") for i in range(120)] + [_event(200 + i, f"full{i}") for i in range(5)]
    protected = protect(events, keyring)
    subjects = {str(orjson.loads(v)["user_id"]) for _k, v in protected[120:]}
    epoch = now_ms // 1000 // 86400
    full = [Charge(s, priv.ledger_id(s, epoch), round((CAP - 1) * MICRO), 10**12) for s in subjects]
    assert all(store.charge(full, round(CAP * MICRO)))
    precharged = len(full) * round((CAP - 1) * MICRO)

    recs = [Record("clicks.protected", 0, i, v, now_ms) for i, (_k, v) in enumerate(protected)]
    engine.process(recs[:60])
    engine.process(recs[60:])
    # the same people again (a redelivery): their ledgers are at the cap, nothing more is charged
    engine.process([Record("clicks.protected", 0, len(recs) + i, v, now_ms) for i, (_k, v) in enumerate(protected)])
    # 10 more people a minute later: the first sessions end (gap 1 s), their examples are labelled
    later = protect([_event(300 + i, f"later{i}") for i in range(10)], keyring)
    engine.process([Record("clicks.protected", 0, 2 * len(recs) + i, v, now_ms + 60_000)
                    for i, (_k, v) in enumerate(later)])
    engine.tick()
    engine.finish()

    label_micro = sum(store.ledgers.values()) - precharged - sum(
        round(a.epsilon_1 * MICRO) for a in priv.policy.attributes) * engine.stats.reports
    if model == "joint-nb":
        assert label_micro == 30 * round(LABEL_EPS * MICRO)  # one example per person-epoch, paid once
        assert priv.per_person == 3 and engine.stats.reports == 20 * 3 + 10
        assert engine.stats.examples == 20  # the first 20 people's sessions ended
    else:
        assert label_micro == engine.stats.reports * priv._cost[LABEL_NAME] > 0  # each report's label, prepaid
        assert engine.stats.examples == 40  # one per reported event of the ended sessions
    snap = metrics.snapshot()["ldp"]
    # the label's ε is in the metrics, as charged; with the features', it is everything the ledger was charged
    assert snap[LABEL_NAME]["epsilon_spent"] == pytest.approx(label_micro / MICRO)
    assert snap[LABEL_NAME]["reports"] == engine.stats.examples  # the examples emitted (they add no ε)
    assert sum(row["epsilon_spent"] for row in snap.values()) == pytest.approx(
        (sum(store.ledgers.values()) - precharged) / MICRO)
    assert metrics.registry.get_sample_value(
        "streamgate_ldp_epsilon_spent_total", {"worker": "privatizer", "attribute": LABEL_NAME}
    ) == pytest.approx(label_micro / MICRO)
    assert engine.stats.epsilon_spent[LABEL_NAME] == pytest.approx(label_micro / MICRO)
