"""The LDP policy of an input schema: which attributes are randomized, over which domain, how.

Read from the ``ldp`` properties of the schema (policy lives in ``schemas/``, not in code):

* **categorical** - ``enum`` (or ``x-privacy.domain``) is the domain, in schema order. A value
  outside ``x-privacy.domain`` maps to ``x-privacy.out_of_domain`` (e.g. country codes beyond
  the listed ones count as ``"other"``). An optional attribute gets one more domain value,
  :data:`NONE_VALUE`, for "absent": every report carries every attribute, because whether an
  attribute is present (``category`` only exists on product events) would otherwise leak the
  randomized ``event_type`` in clear.
* **numeric** - ``x-privacy.bounds`` ``[lo, hi]`` (else the schema's ``minimum``/``maximum``)
  is the clamping range; an absent value is reported as ``lo`` (so the published mean of
  ``price`` is the mean over all events, absent counted as 0 - documented in the README).

Every attribute is randomized in two rounds (:mod:`stream.ldp.longitudinal`). Its epsilon -
``x-privacy.epsilon``, else ``STREAMGATE_LDP_EPSILON`` - is the longitudinal ``eps_inf`` of a
memoized permanent response (what a memo costs in the person's ledger, so the epsilons say
how the person cap is shared); ``x-privacy.epsilon_1`` (default ``eps_inf *`` :data:`IRR_FRACTION`)
is the per-report ``eps_1`` and must be below ``eps_inf``. ``x-privacy.mechanism`` hints the
mechanism: ``GRR`` (L-GRR) or ``OUE`` (L-OSUE) for categorical, ``numeric``/``Duchi`` (L-Duchi)
for numeric. Without a hint a categorical attribute gets L-GRR iff ``k < 3 e^eps_1 + 2`` (where
GRR's variance at ``eps_1`` is the smaller), else L-OSUE. ``OLH``, ``PM`` and ``HM`` are refused:
an OLH report carries its hash seed (per memo: a fingerprint), PM/HM a continuous value.

A report is marginally the one-round oracle at ``eps_1`` (GRR, OUE or Duchi), so ``params()``
- what a report carries - names that oracle and ``eps_1``: consumers debias as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stream.errors import SchemaPolicyError
from stream.ldp.longitudinal import LongitudinalDuchi, LongitudinalGRR, LongitudinalMechanism, LongitudinalOUE
from stream.ldp.numeric import NumericMechanism
from stream.ldp.oracle import FrequencyOracle
from stream.schema import EventSchema

__all__ = [
    "IRR_FRACTION",
    "NONE_VALUE",
    "LdpAttribute",
    "LdpPolicy",
    "PrivacyAccount",
    "longitudinal_categorical",
    "privacy_account",
]

#: Default per-report epsilon as a fraction of the longitudinal one.
IRR_FRACTION = 0.5

#: Domain value of an optional categorical attribute that is absent from the event.
NONE_VALUE = "_none"

_CATEGORICAL_HINTS = {None, "GRR", "OUE"}
_NUMERIC_HINTS = {"numeric", "Duchi"}
_REFUSED = {
    "OLH": "an OLH report carries its hash seed, which a memo would fix per person (a fingerprint); use GRR or OUE",
    "PM": "a continuous report links a person's reports; use numeric (L-Duchi)",
    "HM": "a continuous report links a person's reports; use numeric (L-Duchi)",
}


def longitudinal_categorical(k: int, eps_inf: float, eps_1: float, hint: str | None = None) -> LongitudinalMechanism:
    """L-GRR or L-OSUE for ``k`` values (``hint`` "GRR"/"OUE"; default: GRR iff k < 3 e^eps_1 + 2)."""
    if hint is None:
        hint = "GRR" if k < 3.0 * math.exp(eps_1) + 2.0 else "OUE"
    if hint == "GRR":
        return LongitudinalGRR(k, eps_inf, eps_1)
    if hint == "OUE":
        return LongitudinalOUE(k, eps_inf, eps_1)
    raise ValueError(f"unknown categorical mechanism {hint!r}")


@dataclass(frozen=True)
class LdpAttribute:
    """One randomized attribute: its domain (or bounds), epsilon and mechanism."""

    name: str
    kind: Literal["categorical", "numeric"]
    epsilon: float  # eps_inf: the longitudinal bound of a memo and its price in the ledger
    domain: tuple[str, ...] = ()
    out_of_domain: str | None = None
    optional: bool = False
    lo: float = 0.0
    hi: float = 1.0
    oracle: FrequencyOracle | None = field(default=None, compare=False, repr=False)
    numeric: NumericMechanism | None = field(default=None, compare=False, repr=False)
    epsilon_1: float = 0.0  # per report
    longitudinal: LongitudinalMechanism | None = field(default=None, compare=False, repr=False)
    _index: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def mechanism(self) -> str:
        if self.oracle is not None:
            return self.oracle.name
        assert self.numeric is not None
        return self.numeric.name

    @property
    def k(self) -> int:
        return len(self.domain)

    def index_of(self, value: Any) -> int | None:
        """Domain index of a categorical value (absent -> :data:`NONE_VALUE`, out-of-domain ->
        ``out_of_domain``); None if the value cannot be mapped (the attribute is then not reported)."""
        if value is None:
            return self._index.get(NONE_VALUE)
        idx = self._index.get(value) if isinstance(value, str) else None
        if idx is None and self.out_of_domain is not None:
            return self._index.get(self.out_of_domain)
        return idx

    def clamp(self, value: Any) -> float:
        """The numeric input of the mechanism: clamped to ``[lo, hi]``; absent or non-numeric -> ``lo``."""
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return self.lo
        return min(self.hi, max(self.lo, float(value)))

    def params(self) -> dict[str, Any]:
        """What a consumer needs to debias a report of this attribute (besides the domain, which
        is the source schema's)."""
        if self.oracle is not None:
            return {"m": self.oracle.name, "eps": self.epsilon_1, "k": self.k}
        assert self.numeric is not None
        return {"m": self.numeric.name, "eps": self.epsilon_1, "lo": self.lo, "hi": self.hi}


#: The bucket of an open domain's values outside its listed ones (``x-privacy.open``).
OTHER_VALUE = "_other"


def _domain(name: str, spec: Mapping[str, Any], opts: Mapping[str, Any]) -> tuple[list[str], str | None]:
    raw = opts.get("domain", spec.get("enum"))
    if not isinstance(raw, list) or not raw or not all(isinstance(v, str) for v in raw):
        raise SchemaPolicyError(f"ldp property {name!r}: its domain must be a non-empty list of strings")
    if len(set(raw)) != len(raw) or NONE_VALUE in raw:
        raise SchemaPolicyError(f"ldp property {name!r}: domain values must be unique and not {NONE_VALUE!r}")
    ood = opts.get("out_of_domain")
    if opts.get("open") is True:  # an open domain (a catalog): values outside it count as OTHER_VALUE
        raw, ood = [*raw, OTHER_VALUE] if OTHER_VALUE not in raw else list(raw), OTHER_VALUE
    if ood is not None and ood not in raw:
        raise SchemaPolicyError(f"ldp property {name!r}: out_of_domain must be one of its domain values")
    enum = spec.get("enum")
    if ood is None and not (isinstance(enum, list) and {v for v in enum if v is not None} <= set(raw)):
        # a value the schema admits but the domain does not list would go unreported, and its event would
        # cost less: each person's "first c events" would no longer be the population the estimates name
        raise SchemaPolicyError(f"ldp property {name!r}: the schema admits values outside its domain; set "
                                "x-privacy out_of_domain (one of the domain's values) or open: true, or give the "
                                "property an enum within the domain")
    return list(raw), ood


def _bounds(name: str, spec: Mapping[str, Any], opts: Mapping[str, Any]) -> tuple[float, float]:
    raw = opts.get("bounds", [spec.get("minimum"), spec.get("maximum")])
    ok = (
        isinstance(raw, list)
        and len(raw) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in raw)
        and raw[0] < raw[1]
    )
    if not ok:
        raise SchemaPolicyError(f"ldp property {name!r}: numeric bounds must be [lo, hi] with lo < hi")
    return float(raw[0]), float(raw[1])


class LdpPolicy:
    """The randomized attributes of one input schema, in schema order."""

    def __init__(self, schema_name: str, attributes: list[LdpAttribute]) -> None:
        if not attributes:
            raise SchemaPolicyError(f"schema {schema_name!r} has no ldp properties: nothing to privatize")
        self.schema_name = schema_name
        self.attributes: tuple[LdpAttribute, ...] = tuple(attributes)
        self.by_name: dict[str, LdpAttribute] = {a.name: a for a in attributes}

    @classmethod
    def from_schema(cls, schema: EventSchema, default_epsilon: float) -> LdpPolicy:
        props: Mapping[str, Any] = schema.document.get("properties", {})
        required = set(schema.required)
        attrs: list[LdpAttribute] = []
        for name in schema.fields_with("ldp"):
            spec = props[name]
            opts = schema.fields[name].options
            eps = opts.get("epsilon", default_epsilon)
            if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps <= 20:
                raise SchemaPolicyError(f"ldp property {name!r}: epsilon must be a number in (0, 20]")
            eps = float(eps)
            eps1 = opts.get("epsilon_1", eps * IRR_FRACTION)
            if isinstance(eps1, bool) or not isinstance(eps1, int | float) or not 0 < eps1 < eps:
                raise SchemaPolicyError(f"ldp property {name!r}: epsilon_1 must be a number in (0, epsilon)")
            eps1 = float(eps1)
            hint = opts.get("mechanism")
            if hint in _REFUSED:
                raise SchemaPolicyError(f"ldp property {name!r}: mechanism {hint} refused: {_REFUSED[hint]}")
            types = spec.get("type")
            numeric = hint in _NUMERIC_HINTS or types in ("number", "integer")
            try:
                if numeric:
                    if hint is not None and hint not in _NUMERIC_HINTS:
                        raise SchemaPolicyError(f"ldp property {name!r}: unknown numeric mechanism {hint!r}")
                    lo, hi = _bounds(name, spec, opts)
                    lmech = LongitudinalDuchi(eps, eps1, lo, hi)
                    attrs.append(LdpAttribute(name, "numeric", eps, optional=name not in required,
                                              lo=lo, hi=hi, numeric=lmech.marginal, epsilon_1=eps1,
                                              longitudinal=lmech))
                else:
                    if hint not in _CATEGORICAL_HINTS:
                        raise SchemaPolicyError(f"ldp property {name!r}: unknown categorical mechanism {hint!r}")
                    domain, ood = _domain(name, spec, opts)
                    optional = name not in required
                    if optional:
                        domain.append(NONE_VALUE)
                    cmech = longitudinal_categorical(len(domain), eps, eps1, hint)
                    oracle: FrequencyOracle = cmech.marginal  # type: ignore[attr-defined]
                    attrs.append(LdpAttribute(
                        name, "categorical", eps, domain=tuple(domain), out_of_domain=ood, optional=optional,
                        oracle=oracle, epsilon_1=eps1, longitudinal=cmech,
                        _index={v: i for i, v in enumerate(domain)},
                    ))
            except ValueError as exc:
                raise SchemaPolicyError(f"ldp property {name!r}: {exc}") from None
        return cls(schema.name, attrs)

    def describe(self) -> list[dict[str, Any]]:
        """One line per attribute: what the docs and `streamgate privatizer --explain` show."""
        rows = []
        for a in self.attributes:
            assert a.longitudinal is not None
            row: dict[str, Any] = {"attribute": a.name, "kind": a.kind, "mechanism": a.longitudinal.name,
                                   "eps_inf": a.epsilon, "eps_1": a.epsilon_1}
            row.update({k: v for k, v in a.params().items() if k not in ("m", "eps")})
            row["report_as"] = a.params()["m"]
            rows.append(row)
        return rows


@dataclass(frozen=True)
class PrivacyAccount:
    """The epsilons of a policy under a person cap (what ``privatizer --explain`` states).

    * ``per_report``: attribute (and ``session_purchase``) -> ``eps_1``, what one report of it reveals;
    * ``per_memo``: attribute -> ``eps_inf``, what all reports of one value reveal, and a memo's price;
    * ``per_event``: the sum of ``eps_1`` over the attributes - what one feature report reveals about
      its event (``per_example`` adds the label's);
    * ``first_event_cost``: the sum of ``eps_inf`` (label included): what a person's first event of an
      epoch charges to the ledger;
    * ``person_epoch``: the cap: all memos of one person in one epoch together;
    * ``epochs_held`` and ``retention_bound = cap x epochs_held``: every epoch whose reports may still be
      retained (the retention window plus the epoch in progress) has its own ledger, and the bounds add up.
    """

    per_report: dict[str, float]
    per_memo: dict[str, float]
    per_event: float
    per_example: float | None
    first_event_cost: float
    person_epoch: float
    epochs_held: int
    retention_bound: float


def privacy_account(policy: LdpPolicy, *, person_epsilon: float, epoch_seconds: int, retention_seconds: int,
                    label_epsilon: float | None = None) -> PrivacyAccount:
    """The :class:`PrivacyAccount` of ``policy`` (``label_epsilon``: the label's eps_inf, None = examples off)."""
    per_report = {a.name: a.epsilon_1 for a in policy.attributes}
    per_memo = {a.name: a.epsilon for a in policy.attributes}
    label_1 = None if label_epsilon is None else label_epsilon * IRR_FRACTION
    if label_epsilon is not None and label_1 is not None:
        per_report["session_purchase"] = label_1
        per_memo["session_purchase"] = label_epsilon
    per_event = sum(a.epsilon_1 for a in policy.attributes)
    epochs = -(-retention_seconds // epoch_seconds) + 1
    return PrivacyAccount(
        per_report=per_report, per_memo=per_memo, per_event=per_event,
        per_example=None if label_1 is None else per_event + label_1,
        first_event_cost=sum(per_memo.values()), person_epoch=person_epsilon, epochs_held=epochs,
        retention_bound=person_epsilon * epochs,
    )
