"""Debiased features are unbiased: over many perturbations of one true value, the mean feature
vector of a report is the one-hot of that value (GRR, OUE, OLH) or its scaled value (numeric);
transform_clear gives that expectation exactly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stream.ldp.choice import make_oracle
from stream.ldp.numeric import make_numeric
from stream.ldp.olh import olh_g
from stream.learn.example import EXAMPLE_SCHEMA, FEATURE_SCHEMA, LABEL_NAME, PrivateExample
from stream.learn.features import FeatureMap, scale_numeric

N = 20_000


def _example(features: dict[str, dict[str, Any]], how: int | None = None) -> PrivateExample:
    doc: dict[str, Any] = {"schema": FEATURE_SCHEMA, "source_schema": "test", "features": features}
    if how is not None:
        doc["hour_of_week"] = how
    return PrivateExample.from_dict(doc)


def _reports(mechanism: str, k: int, eps: float, value: int, seed: int) -> list[dict[str, Any]]:
    oracle = make_oracle(k, eps, mechanism)
    params: dict[str, Any] = {"m": mechanism, "eps": eps, "k": k}
    if mechanism == "OLH":
        params["g"] = olh_g(eps)
    rng = np.random.default_rng(seed)
    return [{**params, "r": r} for r in oracle.perturb(np.full(N, value, dtype=np.int64), rng)]


def _mean_features(fmap: FeatureMap, reports: list[dict[str, Any]], k: int) -> np.ndarray:
    total = np.zeros(k)
    for rep in reports:
        x = fmap.transform(_example({"a": rep}))
        total += np.array([x.get(f"a={v}", 0.0) for v in range(k)])
    return total / len(reports)


@pytest.mark.parametrize(
    ("mechanism", "k", "eps", "value"),
    [
        ("GRR", 7, 1.0, 3),
        ("GRR", 31, 4.0, 0),
        ("OUE", 10, 1.0, 9),
        ("OUE", 70, 2.0, 64),
        ("OLH", 31, 1.0, 17),
        ("OLH", 34, 3.0, 2),
    ],
)
def test_debiased_features_are_unbiased_for_the_one_hot(
    mechanism: str, k: int, eps: float, value: int
) -> None:
    reports = _reports(mechanism, k, eps, value, seed=1000 + k)
    fmap = FeatureMap(debias=True)
    mean = _mean_features(fmap, reports, k)
    oracle = make_oracle(k, eps, mechanism)
    p, q = oracle.p, oracle.q
    one_hot = np.zeros(k)
    one_hot[value] = 1.0
    # exact standard error of the mean of (s - q)/(p - q): s ~ Bernoulli(p) at the value, Bernoulli(q) elsewhere
    se = np.where(one_hot == 1.0, math.sqrt(p * (1 - p)), math.sqrt(q * (1 - q))) / (p - q) / math.sqrt(N)
    z = np.abs(mean - one_hot) / se
    assert z.max() < 5.0, (mechanism, z.max())
    # the raw support indicators are not: they estimate p at the value and q elsewhere
    raw = _mean_features(FeatureMap(debias=False), reports, k)
    assert abs(raw[value] - p) < 5 * math.sqrt(p * (1 - p) / N)
    assert np.abs(raw - one_hot).max() > 0.3


def test_debiased_values_are_the_oracle_formula() -> None:
    eps, k = 1.0, 7
    oracle = make_oracle(k, eps, "GRR")
    x = FeatureMap().transform(_example({"event_type": {"m": "GRR", "eps": eps, "k": k, "r": 2}}))
    p, q = oracle.p, oracle.q
    assert set(x) == {f"event_type={v}" for v in range(k)}
    assert x["event_type=2"] == pytest.approx((1 - q) / (p - q))
    assert x["event_type=5"] == pytest.approx(-q / (p - q))
    sparse = FeatureMap(debias=False).transform(
        _example({"event_type": {"m": "GRR", "eps": eps, "k": k, "r": 2}})
    )
    assert sparse == {"event_type=2": 1.0}


def test_oue_support_is_the_set_bits_and_hex_is_the_same_report() -> None:
    fmap = FeatureMap(debias=False)
    as_int = fmap.transform(_example({"d": {"m": "OUE", "eps": 1.0, "k": 5, "r": 0b10101}}))
    as_hex = fmap.transform(_example({"d": {"m": "OUE", "eps": 1.0, "k": 5, "r": "15"}}))
    assert as_int == as_hex == {"d=0": 1.0, "d=2": 1.0, "d=4": 1.0}


def test_olh_support_uses_the_reported_hash_and_its_own_g() -> None:
    eps, k = 1.0, 31
    a, b = 123457, 9876
    g = olh_g(eps)
    y = ((a * 5 + b) % (2**31 - 1)) % g
    x = FeatureMap(debias=False).transform(
        _example({"c": {"m": "OLH", "eps": eps, "k": k, "g": g, "r": [a, b, y]}})
    )
    expected = {f"c={v}" for v in range(k) if ((a * v + b) % (2**31 - 1)) % g == y}
    assert "c=5" in expected and set(x) == expected
    # a report with another hash range than olh_g(eps) is debiased with its own g (GRR over g buckets)
    fmap = FeatureMap()
    rep = _example({"c": {"m": "OLH", "eps": eps, "k": k, "g": g + 3, "r": [a, b, 0]}}).features["c"]
    e = math.exp(eps)
    assert fmap.support_probabilities(rep) == pytest.approx((e / (e + g + 2), 1 / (g + 3)))


@pytest.mark.parametrize("mechanism", ["HM", "PM", "Duchi"])
def test_numeric_features_are_unbiased_for_the_scaled_value(mechanism: str) -> None:
    lo, hi, eps, value = 0.0, 5000.0, 1.0, 1250.0
    mech = make_numeric(eps, lo, hi, mechanism)
    out = mech.perturb(np.full(N, value), np.random.default_rng(7))
    fmap = FeatureMap()
    feats = np.array(
        [
            fmap.transform(
                _example({"price": {"m": mechanism, "eps": eps, "lo": lo, "hi": hi, "r": float(r)}})
            )["price"]
            for r in out
        ]
    )
    target = scale_numeric(value, lo, hi)
    assert target == -0.5
    se = feats.std() / math.sqrt(N)
    assert abs(feats.mean() - target) < 5 * se
    assert feats.min() < -1.0 or feats.max() > 1.0  # not clipped (clipping would bias)


def test_numeric_scaling_and_hour_features() -> None:
    fmap = FeatureMap()
    x = fmap.transform(
        _example({"price": {"m": "HM", "eps": 1.0, "lo": 0, "hi": 5000, "r": 2500.0}}, how=130)
    )
    assert x == {"price": 0.0, "hour=10": 1.0, "weekend": 1.0}
    x = fmap.transform(_example({"price": {"m": "PM", "eps": 1.0, "lo": -10, "hi": 10, "r": -30.0}}, how=23))
    assert x == {"price": -3.0, "hour=23": 1.0}
    assert (
        fmap.transform(_example({"price": {"m": "PM", "eps": 1.0, "lo": -10, "hi": 10, "r": 10}}))["price"]
        == 1.0
    )


def test_an_absent_attribute_yields_no_features() -> None:
    x = FeatureMap().transform(_example({"device": {"m": "GRR", "eps": 1.0, "k": 5, "r": 1}}))
    assert all(name.startswith("device=") for name in x)


def test_transform_takes_only_private_examples() -> None:
    fmap = FeatureMap()
    for bad in ({"event_type": "purchase"}, {"schema": EXAMPLE_SCHEMA, "features": {}}, b"{}", None):
        with pytest.raises(TypeError):
            fmap.transform(bad)  # type: ignore[arg-type]


DOMAINS = {
    "event_type": ("page_view", "purchase", "search"),
    "category": ("books", "toys", "_none"),
    "country": ("US", "DE", "other"),
}
BOUNDS = {"price": (0.0, 5000.0)}
OOD = {"country": "other"}


def test_transform_clear_is_the_exact_one_hot() -> None:
    fmap = FeatureMap()
    values = {"event_type": "purchase", "category": "toys", "country": "DE", "price": 1250.0}
    x = fmap.transform_clear(values, DOMAINS, BOUNDS, 121, out_of_domain=OOD)
    assert x == {
        "event_type=0": 0.0, "event_type=1": 1.0, "event_type=2": 0.0,
        "category=0": 0.0, "category=1": 1.0, "category=2": 0.0,
        "country=0": 0.0, "country=1": 1.0, "country=2": 0.0,
        "price": -0.5, "hour=1": 1.0, "weekend": 1.0,
    }  # fmt: skip


def test_transform_clear_maps_values_like_the_privatizer() -> None:
    fmap = FeatureMap()
    # absent optional -> _none; out-of-domain -> the out_of_domain bucket; numeric clamped, absent -> lo
    x = fmap.transform_clear(
        {"event_type": "search", "country": "LU", "price": 99999}, DOMAINS, BOUNDS, None, out_of_domain=OOD
    )
    assert x["category=2"] == 1.0 and x["country=2"] == 1.0 and x["price"] == 1.0
    assert "hour=0" not in x
    x = fmap.transform_clear({"event_type": "nope", "country": "LU", "price": "12"}, DOMAINS, BOUNDS, 0)
    assert not any(k.startswith("event_type=") for k in x)  # unmappable (no out_of_domain): no features
    assert not any(k.startswith("country=") for k in x)  # no out_of_domain given
    assert x["price"] == -1.0  # a non-number counts as lo, as in the privatizer
    x = fmap.transform_clear({"event_type": None, "price": True}, DOMAINS, BOUNDS, 0)
    assert not any(k.startswith("event_type=") for k in x)  # None but no _none value in the domain
    assert x["price"] == -1.0


def test_the_feature_map_pickles_without_its_cache() -> None:
    import pickle

    fmap = FeatureMap(debias=False)
    fmap.transform(_example({"a": {"m": "GRR", "eps": 1.0, "k": 4, "r": 1}}))
    clone = pickle.loads(pickle.dumps(fmap))
    assert clone.debias is False and clone._probs == {} and clone._names == {}


def test_examples_with_labels_transform_the_same() -> None:
    feats = {"a": {"m": "GRR", "eps": 1.0, "k": 4, "r": 1}}
    labelled = PrivateExample.from_dict(
        {"schema": EXAMPLE_SCHEMA, "source_schema": "t", "features": feats,
         "label": {"name": LABEL_NAME, "m": "GRR", "eps": 1.0, "k": 2, "r": 1}}
    )  # fmt: skip
    fmap = FeatureMap()
    assert fmap.transform(labelled) == fmap.transform(_example(feats))
