"""Federated averaging, the pure core: FedAvg weighted by example count (hand-checked numbers, and
Hypothesis against McMahan et al.'s definition), a sender's updates in one round summed, adoption
keeping the unpublished local steps, signed updates refused when tampered or foreign, the round's
merge rule, and parameters exchanged between real River models."""

from __future__ import annotations

import math

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.crypto.signing import sign
from stream.errors import ModelUpdateError, SnapshotError
from stream.learn import ModelSnapshot, PropensityModel
from stream.learn import federated as fed
from stream.learn.federated import ModelUpdate, Parameters, Round, adopt, fedavg, max_epsilon, merge_metrics
from tests.support.learn import clickstream_policy, private_examples

EXAMPLES, _CLEAN = private_examples(900, epsilon=4.0, label_epsilon=4.0, seed=5)


def upd(sender: str, n: int, weights: dict[str, float], intercept: float = 0.0, *, seq: int = 1,
        base: int = 0) -> ModelUpdate:
    return ModelUpdate(model="m", sender=sender, seq=seq, base_version=base, examples=n,
                       delta=Parameters(weights, intercept), created_at="2026-01-01T00:00:00.000Z")


# -- the merge --------------------------------------------------------------------------------------
def test_fedavg_weights_each_sender_by_its_example_count() -> None:
    """Dyadic numbers, so every result is exact. Unweighted averaging would give a = 1.125,
    b = 0.5, intercept 0.5; summing the deltas a = 1.25, b = 1.0, intercept 0.5."""
    base = Parameters({"a": 1.0}, 0.5)
    merged, n = fedavg(base, [upd("s1", 1, {"a": 0.5, "b": 1.0}, 0.5), upd("s2", 3, {"a": -0.25}, -0.5)])
    assert n == 4
    assert merged.weights == {"a": 0.9375, "b": 0.25}  # 1 + (1*0.5 + 3*-0.25)/4 ; (1*1.0 + 3*0)/4
    assert merged.intercept == 0.25  # 0.5 + (1*0.5 + 3*-0.5)/4


def test_one_senders_updates_in_a_round_are_its_successive_progress() -> None:
    """s1 sent two updates (1 example each), s2 one (2 examples): two senders with 2 examples each,
    so a = 1 + (2*1.0 + 2*-1.0)/4 = 1. Counted as three clients it would be 1 + (0.5+0.5-2)/4 = 0.75."""
    base = Parameters({"a": 1.0})
    merged, n = fedavg(base, [upd("s1", 1, {"a": 0.5}), upd("s1", 1, {"a": 0.5}, seq=2), upd("s2", 2, {"a": -1.0})])
    assert n == 4 and merged.weights == {"a": 1.0}


def test_a_round_of_one_update_applies_its_whole_delta_and_an_empty_round_nothing() -> None:
    base = Parameters({"a": 1.0}, 2.0)
    merged, n = fedavg(base, [upd("s1", 7, {"a": 0.5, "z": -3.0}, 1.0)])
    assert (merged.weights, merged.intercept, n) == ({"a": 1.5, "z": -3.0}, 3.0, 7)
    assert fedavg(base, []) == (base, 0)


_names = st.sampled_from(["event_type=0", "event_type=1", "category=3", "price", "hour=7", "weekend"])
_val = st.floats(min_value=-50, max_value=50, allow_nan=False)
_params = st.builds(Parameters, st.dictionaries(_names, _val, max_size=6), _val)


@settings(max_examples=200, deadline=None)
@given(base=_params, locals_=st.lists(st.tuples(_params, st.integers(1, 10_000)), min_size=1, max_size=6))
def test_fedavg_is_the_example_weighted_mean_of_the_local_models(base: Parameters,
                                                                 locals_: list[tuple[Parameters, int]]) -> None:
    """Every sender started from ``base`` and reached ``w_k`` (delta ``w_k - base``) on ``n_k`` examples:
    the merge is sum n_k w_k / sum n_k per coordinate (McMahan et al. 2017), inside the local models' range."""
    updates = [upd(f"s{i}", n, w.minus(base).weights, w.intercept - base.intercept) for i, (w, n) in enumerate(locals_)]
    merged, total = fedavg(base, updates)
    assert total == sum(n for _w, n in locals_)
    keys = set(base.weights).union(*(w.weights for w, _n in locals_))
    for k in keys:
        vals = [w.weights.get(k, 0.0) for w, _n in locals_]
        want = sum(v * n for v, (_w, n) in zip(vals, locals_, strict=True)) / total
        assert merged.weights.get(k, 0.0) == pytest.approx(want, rel=1e-9, abs=1e-9)
        assert min(vals) - 1e-9 <= merged.weights.get(k, 0.0) <= max(vals) + 1e-9
    want_b = sum(w.intercept * n for w, n in locals_) / total
    assert merged.intercept == pytest.approx(want_b, rel=1e-9, abs=1e-9)
    # the order the updates arrived in does not matter
    again, _ = fedavg(base, list(reversed(updates)))
    assert again == merged


def test_adoption_keeps_the_steps_not_yet_published() -> None:
    anchor = Parameters({"a": 1.0, "b": 2.0}, 0.0)
    current = Parameters({"a": 1.5, "b": 2.0, "c": 0.25}, 0.125)  # local steps since the anchor
    glob = Parameters({"a": 3.0, "b": -1.0}, 1.0)
    assert adopt(glob, current, anchor) == Parameters({"a": 3.5, "b": -1.0, "c": 0.25}, 1.125)
    assert adopt(glob, anchor, anchor) == glob  # nothing unpublished: the global model as it is


def test_two_real_models_averaged_through_signed_updates() -> None:
    """Two River models start from one global model and learn 300 and 100 examples; their updates,
    signed and parsed back, merge into the 3:1 mean of their parameters - and the merged model
    predicts as a model holding those parameters."""
    policy = clickstream_policy(4.0)
    start = PropensityModel.for_policy(policy)
    for ex in EXAMPLES[:200]:
        start.learn_one(ex)
    g = Parameters(*start.parameters())
    key = Ed25519PrivateKey.generate()
    locals_ = []
    for name, chunk in (("a", EXAMPLES[200:500]), ("b", EXAMPLES[500:600])):
        m = PropensityModel.for_policy(policy)
        m.set_parameters(*start.parameters())
        for ex in chunk:
            m.learn_one(ex)
        p = Parameters(*m.parameters())
        u = ModelUpdate("m", name, 1, 0, len(chunk), p.minus(g), "2026-01-01T00:00:00.000Z")
        locals_.append((p, ModelUpdate.from_bytes(u.to_bytes(key), key.public_key())))
    merged, n = fedavg(g, [u for _p, u in locals_])
    assert n == 400
    (pa, _), (pb, _) = locals_
    for k in set(pa.weights) | set(pb.weights):
        assert merged.weights[k] == pytest.approx(0.75 * pa.weights.get(k, 0.0) + 0.25 * pb.weights.get(k, 0.0),
                                                  abs=1e-12)
    assert merged.intercept == pytest.approx(0.75 * pa.intercept + 0.25 * pb.intercept, abs=1e-12)
    served = PropensityModel.for_policy(policy)
    served.set_parameters(merged.weights, merged.intercept)
    ex = EXAMPLES[700]
    z = sum(merged.weights.get(k, 0.0) * v for k, v in served.features.transform(ex).items()) + merged.intercept
    assert served.predict_proba_one(ex) == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-9)


def test_parameters_survive_a_snapshot_and_a_scaled_model_refuses_them() -> None:
    m = PropensityModel.for_policy(clickstream_policy(4.0))
    for ex in EXAMPLES[:100]:
        m.learn_one(ex)
    key = Ed25519PrivateKey.generate()
    snap = ModelSnapshot.capture(m, metrics={}, label_epsilon=4.0, feature_epsilon={})
    snap = ModelSnapshot(**{**snap.__dict__, "federation": {"version": 3, "merged_updates": 2}})
    back = ModelSnapshot.from_bytes(snap.to_bytes(key), key.public_key())
    assert back.model.parameters() == m.parameters()
    assert back.version == 3 and back.federation == {"version": 3, "merged_updates": 2}
    assert ModelSnapshot.read_header(snap.to_bytes(key))["federation"]["version"] == 3
    with pytest.raises(ValueError):
        PropensityModel(scale=True).set_parameters({"a": 1.0}, 0.0)


# -- signed updates ---------------------------------------------------------------------------------
def test_update_round_trip_and_every_tampering_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    u = ModelUpdate("m", "host-1-ab", 4, 7, 250, Parameters({"a": 0.1, "b": -2.5e-7}, 0.03),
                    "2026-01-01T00:00:00.000Z", epsilon={"label": 4.0, "features": {"device": 2.0}},
                    metrics={"roc_auc": 0.61, "n": 900.0})
    data = u.to_bytes(key)
    assert ModelUpdate.from_bytes(data, key.public_key()) == u
    for i in (0, 9, len(data) // 2, len(data) - 70, len(data) - 1):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(ModelUpdateError):
            ModelUpdate.from_bytes(bytes(bad), key.public_key())
    with pytest.raises(ModelUpdateError, match="authentication"):
        ModelUpdate.from_bytes(data, Ed25519PrivateKey.generate().public_key())
    # an update never verifies as a snapshot (and a snapshot never as an update): separate contexts
    with pytest.raises(SnapshotError):
        ModelSnapshot.from_bytes(data, key.public_key())
    m = PropensityModel()
    snap = ModelSnapshot.capture(m, metrics={}, label_epsilon=None, feature_epsilon={}).to_bytes(key)
    with pytest.raises(ModelUpdateError):
        ModelUpdate.from_bytes(snap, key.public_key())


@pytest.mark.parametrize("change", [{"examples": 0}, {"examples": -3}, {"intercept": None},
                                    {"weights": {"a": "1"}}, {"weights": [1.0]}, {"seq": True},
                                    {"format": "other"}])
def test_a_validly_signed_update_that_a_merge_must_not_take_is_refused(change: dict[str, object]) -> None:
    key = Ed25519PrivateKey.generate()
    header = {"format": fed.UPDATE_FORMAT, "model": "m", "sender": "s", "seq": 1, "base_version": 0,
              "examples": 5, "created_at": "x", "weights": {"a": 1.0}, "intercept": 0.0, **change}
    head = orjson.dumps(header)
    body = fed._MAGIC + len(head).to_bytes(4, "big") + head
    with pytest.raises(ModelUpdateError):
        ModelUpdate.from_bytes(body + sign(key, "model-update.v1", body), key.public_key())


# -- rounds -----------------------------------------------------------------------------------------
def test_a_round_is_due_once_every_active_sender_sent_or_after_the_wait() -> None:
    r = Round(wait_seconds=5.0, active_seconds=20.0)
    assert not r.due(0.0)
    r.add(upd("a", 1, {}), 0.0)
    assert r.due(0.1)  # a is the only sender known: the round is complete
    r.take()
    r.add(upd("b", 1, {}), 1.0)
    assert not r.due(1.5)  # a is active (seen 1.5 s ago) and has not sent yet
    r.add(upd("a", 2, {}), 2.0)
    assert r.due(2.0) and r.examples == 3
    assert [u.sender for u in r.take()] == ["b", "a"]
    r.add(upd("a", 1, {}), 3.0)
    assert not r.due(7.9)  # b is still active
    assert r.due(8.0)  # the wait ran out
    r.take()
    r.add(upd("a", 1, {}), 30.0)
    assert r.due(30.0)  # b was last seen 29 s ago: no longer active


def test_global_metrics_and_epsilon_from_the_senders() -> None:
    m = merge_metrics({"a": {"roc_auc": 0.6, "log_loss": 0.5, "n": 300.0, "drifts": 1.0},
                       "b": {"roc_auc": 0.7, "log_loss": 0.25, "n": 100.0, "drifts": 0.0}})
    assert m == {"roc_auc": pytest.approx(0.625), "log_loss": pytest.approx(0.4375), "n": 400.0, "drifts": 1.0}
    assert max_epsilon([{"label": 1.0, "features": {"a": 2.0}}, {"label": 4.0, "features": {"a": 1.0, "b": 3.0}},
                        {"label": None}]) == (4.0, {"a": 2.0, "b": 3.0})
