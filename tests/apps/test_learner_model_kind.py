"""Failures a learner must not keep quiet about (no broker: the snapshot topic's read is replaced by the
records it would return).

- A snapshot of another model kind under the configured name (a logistic model, the learner set to joint
  naive Bayes): resumed, it would skip every example it reads as another model's and stay ready while
  learning nothing. The learner refuses to start, saying what to change.
- A federated learner whose aggregator failed (or hung) while the learner was stopping exits non-zero."""

from __future__ import annotations

import pytest

import stream.apps.learner as learner_mod
from stream.apps.federated import FederatedLearnerEngine
from stream.apps.learner import LearnerEngine, fresh_model, snapshot_key
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.engine import EngineFatalError
from stream.errors import ConfigError
from stream.learn.snapshot import ModelSnapshot


def test_a_snapshot_of_another_model_kind_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    keyring = Keyring.generate()
    logistic = Settings(kafka_bootstrap="127.0.0.1:1", learn_model="logistic")
    snap = ModelSnapshot(name=logistic.learn_model_name, created_at="2026-12-06T12:00:00.000Z", examples_seen=10,
                         metrics={}, epsilon={}, model=fresh_model(logistic))
    data = snap.to_bytes(snapshot_key(logistic, keyring))
    monkeypatch.setattr(learner_mod, "read_snapshot_records", lambda *a, **kw: [data])

    same = LearnerEngine(logistic, bootstrap="127.0.0.1:1", keyring=keyring)
    assert type(same.resume()).__name__ == "PropensityModel"  # the kind it was trained as: resumed
    joint = LearnerEngine(Settings(kafka_bootstrap="127.0.0.1:1", learn_model="joint-nb"), bootstrap="127.0.0.1:1",
                          keyring=keyring)
    with pytest.raises(ConfigError, match="holds a PropensityModel, but STREAMGATE_LEARN_MODEL=joint-nb"):
        joint.resume()


def test_an_aggregator_that_failed_while_the_learner_stopped_makes_the_worker_fail() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", learn_federated=True)
    engine = FederatedLearnerEngine(settings, bootstrap="127.0.0.1:1", keyring=Keyring.generate())
    engine._agg_error = RuntimeError("aggregator crashed on its way out")
    with pytest.raises(EngineFatalError, match="its aggregator stopped: aggregator crashed"):
        engine.stopped()
    assert engine.fatal_error is not None
    clean = FederatedLearnerEngine(settings, bootstrap="127.0.0.1:1", keyring=Keyring.generate())
    clean.stopped()  # nothing failed: a clean stop
    assert clean.fatal_error is None
