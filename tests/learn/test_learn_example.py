"""The learners' input type: only local-DP reports parse; clear and protected events, malformed and
out-of-range reports are refused; valid reports round-trip."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.errors import InvalidExampleError, StreamgateError
from stream.learn.example import (
    EXAMPLE_SCHEMA,
    FEATURE_SCHEMA,
    LABEL_NAME,
    MAX_DOMAIN,
    OLH_PRIME,
    PrivateExample,
    Report,
)
from stream.schema import output_validator
from stream.synth import ClickstreamGenerator
from tests.support.learn import real_privatizer_output


def _valid() -> dict[str, Any]:
    return {
        "schema": EXAMPLE_SCHEMA,
        "source_schema": "clickstream-event.v1",
        "hour_of_week": 130,
        "features": {
            "event_type": {"m": "GRR", "eps": 1.0, "k": 7, "r": 3},
            "category": {"m": "OLH", "eps": 1.0, "k": 31, "g": 4, "r": [12345, 678, 3]},
            "device": {"m": "OUE", "eps": 1.5, "k": 5, "r": 0b10011},
            "price": {"m": "HM", "eps": 1.0, "lo": 0, "hi": 5000, "r": -812.25},
        },
        "label": {"name": LABEL_NAME, "m": "GRR", "eps": 2.0, "k": 2, "r": 1},
    }


def test_the_reference_document_is_schema_valid_and_parses() -> None:
    doc = _valid()
    assert output_validator(EXAMPLE_SCHEMA)(doc) == []
    ex = PrivateExample.from_json(orjson.dumps(doc))
    assert ex.source_schema == "clickstream-event.v1"
    assert ex.hour_of_week == 130
    assert ex.label == 1 and ex.label_epsilon == 2.0
    assert ex.features["event_type"] == Report("GRR", 1.0, {"k": 7}, 3)
    assert ex.features["category"] == Report("OLH", 1.0, {"k": 31, "g": 4}, (12345, 678, 3))
    assert ex.features["device"] == Report("OUE", 1.5, {"k": 5}, 0b10011)
    assert ex.features["price"] == Report("HM", 1.0, {"lo": 0, "hi": 5000}, -812.25)
    assert PrivateExample.from_json(orjson.dumps(doc).decode()) == ex  # str works too
    assert ex.to_dict() == doc


def test_a_feature_report_parses_without_a_label() -> None:
    doc = _valid()
    del doc["label"], doc["hour_of_week"]
    doc["schema"] = FEATURE_SCHEMA
    ex = PrivateExample.from_dict(doc)
    assert ex.label is None and ex.label_epsilon is None and ex.hour_of_week is None
    assert ex.to_dict() == doc


def test_the_real_privatizers_reports_and_examples_parse() -> None:
    protected, reports, examples = real_privatizer_output(600, epsilon=1.0, label_epsilon=1.0, seed=5)
    assert reports and examples
    for raw in reports:
        ex = PrivateExample.from_json(raw)
        assert ex.label is None and set(ex.features) <= {
            "event_type",
            "category",
            "price",
            "device",
            "country",
        }
    mechanisms = set()
    for raw in examples:
        ex = PrivateExample.from_json(raw)
        assert ex.label in (0, 1) and ex.label_epsilon == 0.5  # per report: eps_1 = eps_inf / 2
        mechanisms |= {r.mechanism for r in ex.features.values()}
    assert mechanisms == {"GRR", "OUE", "Duchi"}  # two-round reports are marginally these at eps_1
    # ... and the protected events they came from never parse
    for raw in protected[:50]:
        with pytest.raises(InvalidExampleError):
            PrivateExample.from_json(raw)


def test_a_clear_clickstream_event_is_refused() -> None:
    for event in ClickstreamGenerator(3).events(50):
        with pytest.raises(InvalidExampleError):
            PrivateExample.from_dict(event)
        with pytest.raises(InvalidExampleError):
            PrivateExample.from_json(orjson.dumps(event))
        # even dressed up with the right schema name, clear values are not reports
        with pytest.raises(InvalidExampleError):
            PrivateExample.from_dict({"schema": EXAMPLE_SCHEMA, **event})


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for p in path[:-1]:
            target = target[p]
        del target[path[-1]]

    return mutate


ET, CAT, DEV, PRICE, LAB = ("features", "event_type"), ("features", "category"), ("features", "device"), ("features", "price"), ("label",)  # fmt: skip
BAD: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown schema": _set(("schema",), "private-feature.v2"),
    "protected event marker": _set(("_schema",), "clickstream-event.v1"),
    "extra top-level field": _set(("user_id",), "usr_0123"),
    "missing features": _delete(("features",)),
    "empty features": _set(("features",), {}),
    "features not an object": _set(("features",), [1, 2]),
    "bad attribute name": _set(("features", "Event-Type"), {"m": "GRR", "eps": 1.0, "k": 7, "r": 3}),
    "bad source schema": _set(("source_schema",), "Clickstream Event"),
    "source schema with newline": _set(("source_schema",), "clickstream\n"),
    "hour 168": _set(("hour_of_week",), 168),
    "hour negative": _set(("hour_of_week",), -1),
    "hour bool": _set(("hour_of_week",), True),
    "hour float": _set(("hour_of_week",), 3.0),
    "unknown mechanism": _set((*ET, "m"), "RR"),
    "lowercase mechanism": _set((*ET, "m"), "grr"),
    "clear value as report": _set(ET, "purchase"),
    "missing eps": _delete((*ET, "eps")),
    "eps zero": _set((*ET, "eps"), 0),
    "eps negative": _set((*ET, "eps"), -1.0),
    "eps bool": _set((*ET, "eps"), True),
    "eps string": _set((*ET, "eps"), "1.0"),
    "eps huge": _set((*ET, "eps"), 1e6),
    "k missing": _delete((*ET, "k")),
    "k one": _set((*ET, "k"), 1),
    "k bool": _set((*ET, "k"), True),
    "k float": _set((*ET, "k"), 7.0),
    "k huge": _set((*ET, "k"), MAX_DOMAIN + 1),
    "GRR r = k": _set((*ET, "r"), 7),
    "GRR r negative": _set((*ET, "r"), -1),
    "GRR r bool": _set((*ET, "r"), True),
    "GRR r string": _set((*ET, "r"), "3"),
    "GRR r float": _set((*ET, "r"), 3.0),
    "GRR r the clear value": _set((*ET, "r"), "purchase"),
    "GRR with g": _set((*ET, "g"), 4),
    "GRR extra field": _set((*ET, "value"), "purchase"),
    "OUE mask too wide": _set((*DEV, "r"), 1 << 5),
    "OUE negative": _set((*DEV, "r"), -1),
    "OUE uppercase hex": _set((*DEV, "r"), "1F"),
    "OUE hex with prefix": _set((*DEV, "r"), "0x1f"),
    "OUE hex too wide": _set((*DEV, "r"), "20"),
    "OUE list": _set((*DEV, "r"), [1, 0, 0, 1, 1]),
    "OUE bool": _set((*DEV, "r"), False),
    "OLH missing g": _delete((*CAT, "g")),
    "OLH g one": _set((*CAT, "g"), 1),
    "OLH g bool": _set((*CAT, "g"), True),
    "OLH pair": _set((*CAT, "r"), [12345, 3]),
    "OLH a zero": _set((*CAT, "r"), [0, 678, 3]),
    "OLH a = P": _set((*CAT, "r"), [OLH_PRIME, 678, 3]),
    "OLH b = P": _set((*CAT, "r"), [1, OLH_PRIME, 3]),
    "OLH y = g": _set((*CAT, "r"), [12345, 678, 4]),
    "OLH y bool": _set((*CAT, "r"), [12345, 678, True]),
    "OLH tuple as object": _set((*CAT, "r"), {"a": 1, "b": 2, "y": 3}),
    "numeric without bounds": _delete((*PRICE, "lo")),
    "numeric lo = hi": _set((*PRICE, "hi"), 0),
    "numeric r string": _set((*PRICE, "r"), "12.5"),
    "numeric r bool": _set((*PRICE, "r"), False),
    "numeric with k": _set((*PRICE, "k"), 7),
    "numeric mechanism as GRR": _set((*PRICE, "m"), "GRR"),
    "label missing": _delete(LAB),
    "label r = 2": _set((*LAB, "r"), 2),
    "label r bool": _set((*LAB, "r"), True),
    "label r float": _set((*LAB, "r"), 1.0),
    "label k = 3": _set((*LAB, "k"), 3),
    "label wrong name": _set((*LAB, "name"), "purchase"),
    "label mechanism": _set((*LAB, "m"), "OUE"),
    "label eps zero": _set((*LAB, "eps"), 0.0),
    "label extra field": _set((*LAB, "true_label"), 1),
    "label clear bool": _set(LAB, True),
    "feature report with a label": _set(("schema",), FEATURE_SCHEMA),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_records_are_refused(case: str) -> None:
    doc = copy.deepcopy(_valid())
    BAD[case](doc)
    with pytest.raises(InvalidExampleError) as info:
        PrivateExample.from_json(orjson.dumps(doc))
    assert isinstance(info.value, StreamgateError)
    # the message names rules and attributes, never a report's values
    assert "12345" not in str(info.value) and "purchase" not in str(info.value).replace(LABEL_NAME, "")


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[1, 2]", b'"private-example.v1"', b"42", b"null", b'{"schema": 1}', b"NaN"]
)
def test_non_records_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidExampleError):
        PrivateExample.from_json(data)


def test_non_text_input_is_refused() -> None:
    with pytest.raises(InvalidExampleError):
        PrivateExample.from_json(_valid())  # type: ignore[arg-type]
    with pytest.raises(InvalidExampleError):
        PrivateExample.from_dict([("schema", EXAMPLE_SCHEMA)])  # type: ignore[arg-type]


# -- property: any valid report round-trips -------------------------------------------------------
_eps = st.floats(min_value=0.01, max_value=20.0, allow_nan=False)
_names = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True)


@st.composite
def _report(draw: st.DrawFn) -> tuple[dict[str, Any], Report]:
    m = draw(st.sampled_from(["GRR", "OUE", "OLH", "PM", "HM", "Duchi"]))
    eps = draw(_eps)
    if m in ("PM", "HM", "Duchi"):
        lo = draw(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
        hi = lo + draw(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False))
        r = draw(st.floats(min_value=-1e7, max_value=1e7, allow_nan=False))
        return {"m": m, "eps": eps, "lo": lo, "hi": hi, "r": r}, Report(m, eps, {"lo": lo, "hi": hi}, r)
    k = draw(st.integers(min_value=2, max_value=200))
    if m == "GRR":
        r = draw(st.integers(min_value=0, max_value=k - 1))
        return {"m": m, "eps": eps, "k": k, "r": r}, Report(m, eps, {"k": k}, r)
    if m == "OUE":
        mask = draw(st.integers(min_value=0, max_value=(1 << k) - 1))
        as_hex = k > 62 or draw(st.booleans())
        r_json: Any = format(mask, "x") if as_hex else mask
        return {"m": m, "eps": eps, "k": k, "r": r_json}, Report(m, eps, {"k": k}, mask)
    g = draw(st.integers(min_value=2, max_value=10_000))
    a = draw(st.integers(min_value=1, max_value=OLH_PRIME - 1))
    b = draw(st.integers(min_value=0, max_value=OLH_PRIME - 1))
    y = draw(st.integers(min_value=0, max_value=g - 1))
    return {"m": m, "eps": eps, "k": k, "g": g, "r": [a, b, y]}, Report(m, eps, {"k": k, "g": g}, (a, b, y))


@st.composite
def _record(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Report], int | None]:
    reports = draw(st.dictionaries(_names, _report(), min_size=1, max_size=6))
    doc: dict[str, Any] = {
        "schema": EXAMPLE_SCHEMA,
        "source_schema": draw(st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True)),
        "features": {name: js for name, (js, _rep) in reports.items()},
    }
    how = draw(st.none() | st.integers(min_value=0, max_value=167))
    if how is not None:
        doc["hour_of_week"] = how
    label = draw(st.none() | st.integers(min_value=0, max_value=1))
    if label is None:
        doc["schema"] = FEATURE_SCHEMA
    else:
        doc["label"] = {"name": LABEL_NAME, "m": "GRR", "eps": draw(_eps), "k": 2, "r": label}
    return doc, {name: rep for name, (_js, rep) in reports.items()}, how


@settings(max_examples=150, deadline=None)
@given(_record())
def test_valid_records_round_trip(case: tuple[dict[str, Any], dict[str, Report], int | None]) -> None:
    doc, reports, how = case
    assert output_validator(doc["schema"])(doc) == []  # the generator only builds schema-valid records
    ex = PrivateExample.from_json(orjson.dumps(doc))
    assert ex.source_schema == doc["source_schema"]
    assert ex.hour_of_week == how
    assert dict(ex.features) == reports
    if "label" in doc:
        assert ex.label == doc["label"]["r"] and ex.label_epsilon == doc["label"]["eps"]
    else:
        assert ex.label is None and ex.label_epsilon is None
    again = PrivateExample.from_json(orjson.dumps(ex.to_dict()))
    assert again == ex
    for rep in ex.features.values():
        assert math.isfinite(rep.epsilon)
