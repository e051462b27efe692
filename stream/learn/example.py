"""The learners' only input type: a parsed, validated local-DP report.

Why a dedicated type: the learning core must never see a clear value. Every
function of :mod:`stream.learn` that learns or predicts on private data takes a
:class:`PrivateExample`, and the only way to get one in production code is to
parse a ``features.private`` record with :meth:`PrivateExample.from_json` /
:meth:`PrivateExample.from_dict`. The parser is strict: anything that is not
exactly a ``private-feature.v1`` or ``private-example.v1`` record
(``schemas/private-feature.v1.json``, ``schemas/private-example.v1.json``) - a
clear clickstream event, a protected event, an unknown mechanism, missing
parameters, a bool or a string where an integer belongs, a report out of its
mechanism's range - raises :class:`~stream.errors.InvalidExampleError`. So a
clear event cannot slip into a model by accident: it is refused at the door,
and the model's verbs refuse every other type with ``TypeError``.

Validation goes beyond what JSON Schema can say, because the feature map
relies on it:

* reports must lie in their mechanism's range: GRR ``0 <= r < k``; OUE a
  bitmask below ``2**k``; OLH ``1 <= a < P``, ``0 <= b < P``, ``0 <= y < g``
  (``P = 2**31 - 1``);
* numeric bounds must be finite with ``lo < hi`` and ``r`` finite;
* integers are JSON integers: ``2.0`` is refused where the schema says
  ``integer`` (JSON Schema would accept it; no streamgate writer produces it);
* ``k <= MAX_DOMAIN`` and ``eps <= MAX_EPSILON``: bounds the schemas do not
  state, so that a garbage record cannot make the feature map allocate a
  billion features or overflow ``exp(eps)`` (the policy caps eps at 20 and the
  largest shipped domain has 34 values).

Error messages name the offending attribute and rule, never the values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from stream.errors import InvalidExampleError

__all__ = [
    "CATEGORICAL_MECHANISMS",
    "EXAMPLE_SCHEMA",
    "FEATURE_SCHEMA",
    "LABEL_NAME",
    "MAX_DOMAIN",
    "MAX_EPSILON",
    "NUMERIC_MECHANISMS",
    "OLH_PRIME",
    "OUE_INT_MAX_K",
    "PrivateExample",
    "Report",
]

EXAMPLE_SCHEMA = "private-example.v1"
FEATURE_SCHEMA = "private-feature.v1"
LABEL_NAME = "session_purchase"

CATEGORICAL_MECHANISMS = frozenset({"GRR", "OUE", "OLH"})
NUMERIC_MECHANISMS = frozenset({"PM", "HM", "Duchi"})

#: Largest categorical domain accepted (a report of k values becomes k features).
MAX_DOMAIN = 4096
#: Largest epsilon accepted (e^100 ~ 2.7e43; the policy caps epsilon at 20).
MAX_EPSILON = 100.0
#: The prime of the OLH hash family (same as :data:`stream.ldp.olh.MERSENNE_P`).
OLH_PRIME = (1 << 31) - 1
#: OUE reports of domains up to this size are written as JSON integers, larger ones as hex.
OUE_INT_MAX_K = 62

_SOURCE_RE = re.compile(r"[a-z0-9.-]+")
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_HEX_RE = re.compile(r"[0-9a-f]+")
_TOP_KEYS = {
    FEATURE_SCHEMA: ({"schema", "source_schema", "features"}, {"hour_of_week"}),
    EXAMPLE_SCHEMA: ({"schema", "source_schema", "features", "label"}, {"hour_of_week"}),
}
_LABEL_KEYS = frozenset({"name", "m", "eps", "k", "r"})


@dataclass(frozen=True, slots=True)
class Report:
    """One attribute's randomized report and its mechanism parameters.

    ``params``: ``{"k": k}`` for GRR/OUE, ``{"k": k, "g": g}`` for OLH, ``{"lo": lo, "hi": hi}``
    for PM/HM/Duchi. ``value``: GRR the perturbed index (int); OUE the perturbed bitmask (int,
    bit ``v`` = domain value ``v``, whatever the JSON form); OLH the triple ``(a, b, y)``;
    numeric the perturbed value in attribute units (float).
    """

    mechanism: str
    epsilon: float
    params: Mapping[str, float | int]
    value: Any

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the report, as the privatizer writes it."""
        out: dict[str, Any] = {"m": self.mechanism, "eps": self.epsilon}
        if self.mechanism in NUMERIC_MECHANISMS:
            out["lo"] = self.params["lo"]
            out["hi"] = self.params["hi"]
            out["r"] = self.value
            return out
        out["k"] = self.params["k"]
        if self.mechanism == "OLH":
            out["g"] = self.params["g"]
            out["r"] = list(self.value)
        elif self.mechanism == "OUE" and int(self.params["k"]) > OUE_INT_MAX_K:
            out["r"] = format(self.value, "x")
        else:
            out["r"] = self.value
        return out


@dataclass(frozen=True, slots=True)
class PrivateExample:
    """A parsed ``private-feature.v1`` / ``private-example.v1`` record (see the module docstring).

    ``label`` is the *randomized* label bit (binary randomized response at ``label_epsilon``);
    both are None for a ``private-feature.v1`` report. Only :meth:`from_json` / :meth:`from_dict`
    construct instances in production code.
    """

    source_schema: str
    features: Mapping[str, Report]
    hour_of_week: int | None
    label: int | None
    label_epsilon: float | None

    @classmethod
    def from_json(cls, data: bytes | str) -> PrivateExample:
        """Parse one record's JSON text; :class:`InvalidExampleError` unless it is a valid report."""
        if not isinstance(data, bytes | bytearray | memoryview | str):
            raise InvalidExampleError(f"expected JSON text, got {type(data).__name__}")
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InvalidExampleError("not valid JSON") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PrivateExample:
        """Validate a decoded record (same rules as :meth:`from_json`)."""
        if not isinstance(doc, Mapping):
            raise InvalidExampleError("a record must be a JSON object")
        schema = doc.get("schema")
        if not isinstance(schema, str) or schema not in _TOP_KEYS:
            raise InvalidExampleError(f"not a {FEATURE_SCHEMA} or {EXAMPLE_SCHEMA} record")
        required, optional = _TOP_KEYS[schema]
        keys = set(doc)
        if not required <= keys:
            raise InvalidExampleError(f"{schema}: missing {sorted(required - keys)}")
        extra = keys - required - optional
        if extra:
            raise InvalidExampleError(
                f"{schema}: {len(extra)} unexpected propert{'y' if len(extra) == 1 else 'ies'}"
            )
        source = doc["source_schema"]
        if not isinstance(source, str) or not _SOURCE_RE.fullmatch(source):
            raise InvalidExampleError(f"{schema}: malformed source_schema")
        how: int | None = None
        if "hour_of_week" in doc:
            how = doc["hour_of_week"]
            if not _is_int(how) or not 0 <= how <= 167:
                raise InvalidExampleError(f"{schema}: hour_of_week must be an integer in [0, 167]")
        raw_features = doc["features"]
        if not isinstance(raw_features, Mapping) or not raw_features:
            raise InvalidExampleError(f"{schema}: features must be a non-empty object")
        features: dict[str, Report] = {}
        for name, rep in raw_features.items():
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise InvalidExampleError(f"{schema}: malformed attribute name")
            features[name] = _parse_report(name, rep)
        label: int | None = None
        label_eps: float | None = None
        if schema == EXAMPLE_SCHEMA:
            label, label_eps = _parse_label(doc["label"])
        return cls(source, features, how, label, label_eps)

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON form (``private-example.v1`` if it has a label, else ``private-feature.v1``)."""
        out: dict[str, Any] = {
            "schema": FEATURE_SCHEMA if self.label is None else EXAMPLE_SCHEMA,
            "source_schema": self.source_schema,
            "features": {name: rep.to_dict() for name, rep in self.features.items()},
        }
        if self.hour_of_week is not None:
            out["hour_of_week"] = self.hour_of_week
        if self.label is not None:
            out["label"] = {
                "name": LABEL_NAME,
                "m": "GRR",
                "eps": self.label_epsilon,
                "k": 2,
                "r": self.label,
            }
        return out


def _is_int(x: Any) -> bool:
    return type(x) is int


def _epsilon(where: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise InvalidExampleError(f"{where}: eps must be a finite number")
    if not 0 < x <= MAX_EPSILON:
        raise InvalidExampleError(f"{where}: eps must be in (0, {MAX_EPSILON:g}]")
    return float(x)


def _exact_keys(where: str, rep: Mapping[str, Any], keys: set[str]) -> None:
    if set(rep) != keys:
        raise InvalidExampleError(f"{where}: expected exactly the fields {sorted(keys)}")


def _parse_report(name: str, rep: Any) -> Report:
    where = f"feature {name!r}"
    if not isinstance(rep, Mapping):
        raise InvalidExampleError(f"{where}: a report must be an object")
    m = rep.get("m")
    if not isinstance(m, str) or m not in CATEGORICAL_MECHANISMS | NUMERIC_MECHANISMS:
        raise InvalidExampleError(f"{where}: unknown mechanism")
    if m in NUMERIC_MECHANISMS:
        _exact_keys(where, rep, {"m", "eps", "lo", "hi", "r"})
        eps = _epsilon(where, rep["eps"])
        lo, hi, r = rep["lo"], rep["hi"], rep["r"]
        for x in (lo, hi, r):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise InvalidExampleError(f"{where}: lo, hi and r must be finite numbers")
        if not lo < hi:
            raise InvalidExampleError(f"{where}: lo must be < hi")
        return Report(m, eps, {"lo": lo, "hi": hi}, float(r))
    keys = {"m", "eps", "k", "r"} | ({"g"} if m == "OLH" else set())
    _exact_keys(where, rep, keys)
    eps = _epsilon(where, rep["eps"])
    k = rep["k"]
    if not _is_int(k) or not 2 <= k <= MAX_DOMAIN:
        raise InvalidExampleError(f"{where}: k must be an integer in [2, {MAX_DOMAIN}]")
    r = rep["r"]
    if m == "GRR":
        if not _is_int(r) or not 0 <= r < k:
            raise InvalidExampleError(f"{where}: GRR r must be an integer in [0, k)")
        return Report(m, eps, {"k": k}, r)
    if m == "OUE":
        if isinstance(r, str):
            if not _HEX_RE.fullmatch(r):
                raise InvalidExampleError(f"{where}: OUE r must be an integer or lowercase hex")
            mask = int(r, 16)
        elif _is_int(r):
            mask = r
        else:
            raise InvalidExampleError(f"{where}: OUE r must be an integer or lowercase hex")
        if not 0 <= mask < (1 << k):
            raise InvalidExampleError(f"{where}: OUE r must be a bitmask of k bits")
        return Report(m, eps, {"k": k}, mask)
    g = rep["g"]
    if not _is_int(g) or g < 2:
        raise InvalidExampleError(f"{where}: g must be an integer >= 2")
    if not isinstance(r, list) or len(r) != 3 or not all(_is_int(x) for x in r):
        raise InvalidExampleError(f"{where}: OLH r must be [a, b, y] integers")
    a, b, y = r
    if not (1 <= a < OLH_PRIME and 0 <= b < OLH_PRIME and 0 <= y < g):
        raise InvalidExampleError(f"{where}: OLH r out of range (a in [1, P), b in [0, P), y in [0, g))")
    return Report(m, eps, {"k": k, "g": g}, (a, b, y))


def _parse_label(lab: Any) -> tuple[int, float]:
    if not isinstance(lab, Mapping):
        raise InvalidExampleError("label must be an object")
    _exact_keys("label", lab, set(_LABEL_KEYS))
    if lab["name"] != LABEL_NAME or lab["m"] != "GRR":
        raise InvalidExampleError(f"label must be the GRR report of {LABEL_NAME!r}")
    eps = _epsilon("label", lab["eps"])
    if not _is_int(lab["k"]) or lab["k"] != 2:
        raise InvalidExampleError("label: k must be 2")
    r = lab["r"]
    if not _is_int(r) or r not in (0, 1):
        raise InvalidExampleError("label: r must be 0 or 1")
    return r, eps
