"""Each learner update is merged once, even when it is on models.updates twice: a record re-sent after
a delivery timeout (a new produce call, beyond the producer's idempotence) or a signed update replayed by
anyone who can write the topic. The aggregator keeps the highest merged ``seq`` per sender, in the global
version's ``federation`` header too, so the next aggregator (a takeover) keeps refusing it. The engine's
process is called directly, as the broker would drive it; the takeover reads the published version."""

from __future__ import annotations

from typing import Any

import pytest

import stream.apps.federated as federated
from stream.apps.federated import AggregatorEngine
from stream.apps.learner import fresh_model, snapshot_key
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.engine.contract import Record
from stream.learn.federated import ModelUpdate, Parameters

TOPIC = "models.updates"


def _engine(settings: Settings, key: Any) -> AggregatorEngine:
    agg = AggregatorEngine(settings, key=key, instance="agg-1", bootstrap="127.0.0.1:1")
    agg.round.wait_seconds = 0.0  # merge each batch at once
    return agg


def _update(key: Any, settings: Settings, seq: int, examples: int = 10) -> bytes:
    delta = Parameters({"N:event_type": float(examples)}, 0.0)
    return ModelUpdate(settings.learn_model_name, "learner-a", seq, 0, examples, delta,
                       "2026-12-06T12:00:00.000Z").to_bytes(key)


def _rec(offset: int, value: bytes, settings: Settings) -> Record:
    return Record(TOPIC, 0, offset, value, None, settings.learn_model_name.encode())


def test_an_update_seen_twice_is_merged_once_and_a_takeover_keeps_refusing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", learn_federated=True)
    key = snapshot_key(settings, Keyring.generate())
    agg = _engine(settings, key)
    monkeypatch.setattr(federated, "read_snapshot_records", lambda *a, **kw: [])
    one, two = _update(key, settings, 1), _update(key, settings, 2)
    out = agg.process([_rec(0, one, settings), _rec(1, one, settings)])  # the same update re-sent
    assert agg.stats.repeated == 1 and agg.examples_seen == 10 and agg.version == 1
    (snap_out,) = [o for o in out.outputs]
    published = snap_out.value or b""

    # another instance takes over from that version: the replayed update and a re-send stay refused
    monkeypatch.setattr(federated, "read_snapshot_records", lambda *a, **kw: [published])
    again = _engine(settings, key)
    again.process([_rec(2, one, settings), _rec(3, two, settings), _rec(4, two, settings)])
    assert again.version == 2 and again.examples_seen == 20 and again.stats.repeated == 2
    assert again.seqs == {"learner-a": 2}
    assert fresh_model(settings) is not None


def test_an_update_of_another_model_kind_is_not_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    """A logistic learner's update under a joint naive Bayes model's name (learners configured differently):
    its parameters mean something else, so it is counted and never merged; an update of the same kind is."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", learn_federated=True, learn_model="joint-nb")
    key = snapshot_key(settings, Keyring.generate())
    monkeypatch.setattr(federated, "read_snapshot_records", lambda *a, **kw: [])
    agg = _engine(settings, key)

    def update(seq: int, kind: str) -> bytes:
        return ModelUpdate(settings.learn_model_name, "learner-a", seq, 0, 10, Parameters({"N:event_type": 10.0}, 0.0),
                           "2026-12-06T12:00:00.000Z", kind=kind).to_bytes(key)

    agg.process([_rec(0, update(1, "PropensityModel"), settings)])
    assert agg.stats.other_kind == 1 and agg.version == 0 and agg.examples_seen == 0
    agg.process([_rec(1, update(2, "JointNaiveBayes"), settings)])
    assert agg.version == 1 and agg.examples_seen == 10
    assert type(agg.model).__name__ == "JointNaiveBayes"


def test_a_learner_refuses_a_global_version_of_another_model_kind() -> None:
    from stream.apps.federated import FederatedLearnerEngine
    from stream.engine import EngineFatalError
    from stream.learn.snapshot import ModelSnapshot

    keyring = Keyring.generate()
    joint = Settings(kafka_bootstrap="127.0.0.1:1", learn_federated=True, learn_model="joint-nb")
    learner = FederatedLearnerEngine(joint, bootstrap="127.0.0.1:1", keyring=keyring)
    learner.model = fresh_model(joint)
    learner.anchor = Parameters(*learner.model.parameters())
    logistic = Settings(kafka_bootstrap="127.0.0.1:1", learn_model="logistic")
    snap = ModelSnapshot(name=joint.learn_model_name, created_at="2026-12-06T12:00:00.000Z", examples_seen=10,
                         metrics={}, epsilon={}, model=fresh_model(logistic), federation={"version": 3})
    with pytest.raises(EngineFatalError, match="holds a PropensityModel, this learner a JointNaiveBayes"):
        learner.adopt(snap)
