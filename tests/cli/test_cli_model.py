"""``streamgate model show`` / ``model predict`` against snapshots on the real broker: the text and
JSON views (metrics, epsilon, named top weights), no snapshot yet (exit 1, one friendly line),
no master key (header only, marked unverified), a snapshot signed with another key (typed error,
exit 1), and scoring private reports and clear values."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from stream.apps.learner import fresh_model, snapshot_key
from stream.cli import cli
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.kafka import ensure_topics, producer_config
from stream.learn.example import PrivateExample
from stream.learn.snapshot import ModelSnapshot
from tests.support.learner_examples import feature_report, make_examples
from tests.support.workers import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _trained_snapshot(settings: Settings, n: int = 3000) -> ModelSnapshot:
    model = fresh_model(settings)
    for r in make_examples(n, seed=31).records:
        model.learn_one(PrivateExample.from_json(r))
    return ModelSnapshot(name=settings.learn_model_name, created_at="2026-11-27T04:00:00.000Z", examples_seen=n,
                         metrics={"roc_auc": 0.71, "log_loss": 0.43, "n": float(n), "drifts": 0.0},
                         epsilon={"label": 4.0, "features": {"event_type": 4.0, "device": 4.0},
                                  "budget_per_person_attribute_epoch": 8.0, "note": "post-processing"},
                         model=model)


def _publish(settings: Settings, value: bytes, name: str | None = None) -> None:
    p = Producer(producer_config(settings.kafka_bootstrap_or_dev()))
    p.produce(settings.topics.snapshots, key=(name or settings.learn_model_name).encode(), value=value)
    assert p.flush(30) == 0


def _invoke(env: dict[str, Any], *args: str, input: bytes | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, prog_name="streamgate", input=input)


@pytest.fixture
def settings(settings_factory) -> Settings:
    s: Settings = settings_factory(ldp_epsilon=4.0, learn_model="logistic")  # per-event v1 records (issue 22)
    ensure_topics(s.kafka_bootstrap_or_dev(), [s.topics.snapshots], partitions=1)
    return s


def test_model_show_text_json_and_predict(settings: Settings) -> None:
    older = _trained_snapshot(settings, n=500)
    _publish(settings, older.to_bytes(snapshot_key(settings)))
    snap = _trained_snapshot(settings)
    _publish(settings, snap.to_bytes(snapshot_key(settings)))
    _publish(settings, snap.to_bytes(snapshot_key(settings)), name="other-model")
    env = settings_env(settings)

    res = _invoke(env, "model", "show")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "purchase-propensity" in out and "2026-11-27T04:00:00.000Z" in out
    assert "3,000" in out  # the latest snapshot, not the older one
    assert "roc_auc" in out and "0.7100" in out and "log_loss" in out and "0.4300" in out
    assert "verified       yes" in out and "per-person budget cap     8.0" in out
    assert "event_type=" in out  # weights carry domain names, e.g. event_type=checkout

    res = _invoke(env, "model", "show", "--json", "--top", "5")
    assert res.exit_code == 0, res.output
    doc = orjson.loads(res.output)
    assert doc["name"] == "purchase-propensity" and doc["examples_seen"] == 3000 and doc["verified"] is True
    assert doc["metrics"]["roc_auc"] == 0.71 and doc["epsilon"]["label"] == 4.0
    assert len(doc["top_weights"]) == 5
    weights = snap.model.weights()
    top = max(weights, key=lambda k: abs(weights[k]))
    assert doc["top_weights"][0]["feature"] == top
    for w in doc["top_weights"]:  # categorical weights are named by domain value, not by index
        attr, _, value = w["feature"].partition("=")
        if attr in snap.model.domains:
            assert value in snap.model.domains[attr], w

    batch = make_examples(3, seed=5)
    lines = [batch.records[0], feature_report(batch.records[1]),
             orjson.dumps({"event_type": "checkout", "device": "desktop", "country": "DE", "category": "electronics",
                           "price": 120.0, "ts": "2026-11-27T10:00:00Z"}),
             b"not json", orjson.dumps({"schema": "private-feature.v1", "features": {}})]
    res = _invoke(env, "model", "predict", input=b"\n".join(lines) + b"\n")
    assert res.exit_code == 0, res.output
    rows = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert [sorted(r) for r in rows] == [["p"], ["p"], ["p"], ["error"], ["error"]]
    assert rows[0]["p"] == round(snap.model.predict_proba_one(PrivateExample.from_json(lines[0])), 6)
    assert all(0.0 <= r["p"] <= 1.0 for r in rows[:3])


def test_model_show_without_a_snapshot_is_one_friendly_error(settings: Settings) -> None:
    res = _invoke(settings_env(settings), "model", "show", "--name", "no-such-model")
    assert res.exit_code == 1
    assert res.stdout == ""
    assert "no snapshot of model 'no-such-model'" in res.stderr and "streamgate learner" in res.stderr
    assert "Traceback" not in res.output


def test_model_show_without_master_key_shows_the_header_unverified(settings: Settings) -> None:
    _publish(settings, _trained_snapshot(settings, n=200).to_bytes(snapshot_key(settings)))
    env = settings_env(settings)
    env["STREAMGATE_MASTER_KEY"] = None  # (CliRunner: unset)
    res = _invoke(env, "model", "show")
    assert res.exit_code == 0, res.output
    assert "verified       NO" in res.stdout and "examples seen  200" in res.stdout
    assert "top weights" not in res.stdout  # the model is never unpickled unverified
    assert "could not be verified" in res.stderr
    res = _invoke(env, "model", "show", "--json")
    doc = orjson.loads(res.stdout)
    assert doc["verified"] is False and "top_weights" not in doc


def test_model_show_refuses_a_snapshot_signed_with_another_key(settings: Settings) -> None:
    snap = _trained_snapshot(settings, n=200)
    _publish(settings, snap.to_bytes(snapshot_key(settings, Keyring.generate())))
    res = _invoke(settings_env(settings), "model", "show")
    assert res.exit_code == 1
    assert "SnapshotError" in res.stderr and "authentication failed" in res.stderr
    assert "Traceback" not in res.output
    res = _invoke(settings_env(settings), "model", "predict", input=b"{}\n")
    assert res.exit_code == 1 and "SnapshotError" in res.stderr


def test_model_show_names_a_federated_global_version() -> None:
    from stream.commands.learn import model_summary, render_summary

    header = {"name": "m", "created_at": "x", "examples_seen": 10, "metrics": {}, "epsilon": {},
              "federation": {"version": 7, "aggregator": "host-1-ab", "merged_updates": 3, "senders": ["a", "b"],
                             "next_offsets": {"0": 12}}}
    summary = model_summary(header, verified=True)
    assert summary["federation"] == {"version": 7, "aggregator": "host-1-ab", "merged_updates": 3, "senders": ["a", "b"]}
    assert "global version 7 (federated: the last round merged 3 updates from 2 learner(s)" in render_summary(summary)
    assert "global version" not in render_summary(model_summary({**header, "federation": None}, verified=True))



def test_model_show_and_predict_a_joint_naive_bayes(settings_factory) -> None:
    """The default model (issue 22): named log-odds weights, clear values scored, private reports refused."""
    import numpy as np

    from stream.bench.learn import people_stream
    from stream.ldp.examples import ExampleReporter
    from stream.learn.joint import JointNaiveBayes, JointReport

    s: Settings = settings_factory()
    ensure_topics(s.kafka_bootstrap_or_dev(), [s.topics.snapshots], partitions=1)
    model = fresh_model(s)
    assert isinstance(model, JointNaiveBayes)
    st = people_stream(3000, 2, holdout=500)
    raws, _ = ExampleReporter(st.spec, 8.0, np.random.default_rng(2)).reports(st.indices, st.labels)
    for raw in raws:
        model.learn_one(JointReport.from_json(raw))
    snap = ModelSnapshot(name=s.learn_model_name, created_at="2026-12-06T04:00:00.000Z", examples_seen=len(raws),
                         metrics={}, epsilon={"label": 8.0, "features": {}, "note": "post-processing"}, model=model)
    _publish(s, snap.to_bytes(snapshot_key(s)))
    env = settings_env(s)
    res = _invoke(env, "model", "show", "--json", "--top", "3")
    assert res.exit_code == 0, res.output
    doc = orjson.loads(res.output)
    assert doc["examples_seen"] == 3000 and doc["verified"] is True and len(doc["top_weights"]) == 3
    clear = {"event_type": "checkout", "device": "desktop", "country": "DE", "category": "electronics", "price": 120.0}
    lines = [orjson.dumps(clear), make_examples(1, seed=5).records[0]]
    res = _invoke(env, "model", "predict", input=b"\n".join(lines) + b"\n")
    rows = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["p"] == round(model.predict_proba_event(clear), 6) and rows[1] == {"error": "invalid_record"}
