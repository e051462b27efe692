"""From local-DP reports to model features, debiased so a linear model sees the truth in expectation.

Why debias: a categorical report does not say "the value is v"; it *supports*
some values (GRR: the reported index; OUE: the set bits; OLH: every value whose
hash matches ``y``). The support indicator ``s_v`` of a pure frequency oracle
has ``P[s_v = 1] = p`` if the true value is ``v`` and ``q`` otherwise (Wang et al.,
USENIX Security 2017), so

    (s_v - q) / (p - q)

is an unbiased estimate of the one-hot indicator ``1[x = v]``. A linear model's
score is linear in the features, so on debiased features its expected score
equals its score on the clear one-hot encoding: the weights keep the meaning
they would have on clear data, and serving on clear values
(:meth:`FeatureMap.transform_clear`) uses the same weights without any
calibration shift. Without debiasing (``debias=False``) the model sees the raw
support indicators (sparse: only the 1s); its weights then mix the signal of
``v`` with the noise floor of every other value, and a model trained on one
epsilon cannot be served on clear values or another epsilon. Debiasing costs
variance (the debiased feature of a 31-value GRR report at eps = 1 is about 17.5
or -0.49), which the learning rate / scaler has to absorb - the measured effect
is in the model module.

Numeric reports (PM/HM/Duchi) are already unbiased for the clamped value in
attribute units; they are scaled to ``[-1, 1]`` (``2 (r - lo) / (hi - lo) - 1``,
not clipped: clipping would bias them).

``hour_of_week`` is not randomized (it is a coarse bucket of the Kafka
timestamp), so it becomes an exact one-hot of the hour of day (``hour=<h%24>``)
plus ``weekend`` (h >= 120, Saturday and Sunday).

An attribute absent from a report (its per-person budget is spent) yields no
features: its contribution is zero, the same as a weight on an unknown value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from stream.ldp.choice import make_oracle
from stream.learn.example import OLH_PRIME, PrivateExample, Report

__all__ = ["NONE_VALUE", "FeatureMap", "scale_numeric"]

#: Domain value of an absent optional categorical attribute (same as :data:`stream.ldp.policy.NONE_VALUE`).
NONE_VALUE = "_none"


def scale_numeric(value: float, lo: float, hi: float) -> float:
    """``2 (value - lo) / (hi - lo) - 1``: ``[lo, hi]`` onto ``[-1, 1]`` (affine, so unbiasedness survives)."""
    return 2.0 * (value - lo) / (hi - lo) - 1.0


class FeatureMap:
    """Turns a :class:`PrivateExample` (or clear LDP values) into a river feature dict.

    Stateless apart from a cache of the oracles' support probabilities per
    ``(mechanism, k, eps, g)``; the cache is not pickled (it is rebuilt on demand).
    """

    def __init__(self, *, debias: bool = True) -> None:
        self.debias = bool(debias)
        self._probs: dict[tuple[str, int, float, int], tuple[float, float]] = {}
        self._names: dict[tuple[str, int], list[str]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"debias": self.debias}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(debias=state["debias"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"FeatureMap(debias={self.debias})"

    # -- helpers ------------------------------------------------------------------------------------
    def support_probabilities(self, report: Report) -> tuple[float, float]:
        """``(p, q)`` of a categorical report: P[support | true value], P[support | other value]."""
        k = int(report.params["k"])
        g = int(report.params.get("g", 0))
        key = (report.mechanism, k, report.epsilon, g)
        hit = self._probs.get(key)
        if hit is not None:
            return hit
        oracle = make_oracle(k, report.epsilon, report.mechanism)
        p, q = oracle.p, oracle.q
        if report.mechanism == "OLH" and g != getattr(oracle, "g", g):
            # A report's own hash range wins (the schema allows any g >= 2): GRR over g buckets.
            e = math.exp(report.epsilon)
            p, q = e / (e + g - 1), 1.0 / g
        self._probs[key] = (p, q)
        return p, q

    def _feature_names(self, attr: str, k: int) -> list[str]:
        key = (attr, k)
        names = self._names.get(key)
        if names is None:
            names = [f"{attr}={v}" for v in range(k)]
            self._names[key] = names
        return names

    @staticmethod
    def _support(report: Report) -> list[int]:
        """The domain indices the report supports."""
        k = int(report.params["k"])
        m = report.mechanism
        if m == "GRR":
            return [int(report.value)]
        if m == "OUE":
            mask = int(report.value)
            return [v for v in range(k) if (mask >> v) & 1]
        a, b, y = report.value
        g = int(report.params["g"])
        return [v for v in range(k) if ((a * v + b) % OLH_PRIME) % g == y]

    @staticmethod
    def _hour(out: dict[str, float], hour_of_week: int | None) -> None:
        if hour_of_week is not None:
            out[f"hour={hour_of_week % 24}"] = 1.0
            if hour_of_week >= 120:
                out["weekend"] = 1.0

    # -- the maps -----------------------------------------------------------------------------------
    def transform(self, example: PrivateExample) -> dict[str, float]:
        """Features of a private example (see the module docstring)."""
        if not isinstance(example, PrivateExample):
            raise TypeError(f"FeatureMap.transform takes a PrivateExample, not {type(example).__name__}")
        out: dict[str, float] = {}
        for attr, rep in example.features.items():
            if "k" not in rep.params:  # numeric
                out[attr] = scale_numeric(float(rep.value), float(rep.params["lo"]), float(rep.params["hi"]))
                continue
            names = self._feature_names(attr, int(rep.params["k"]))
            support = self._support(rep)
            if self.debias:
                p, q = self.support_probabilities(rep)
                lo_val = -q / (p - q)
                hi_val = (1.0 - q) / (p - q)
                for name in names:
                    out[name] = lo_val
                for v in support:
                    out[names[v]] = hi_val
            else:
                for v in support:
                    out[names[v]] = 1.0
        self._hour(out, example.hour_of_week)
        return out

    def transform_clear(
        self,
        values: Mapping[str, Any],
        domains: Mapping[str, Sequence[str]],
        bounds: Mapping[str, tuple[float, float]],
        hour_of_week: int | None,
        *,
        out_of_domain: Mapping[str, str] | None = None,
    ) -> dict[str, float]:
        """Features of *clear* LDP attribute values: the expectation of :meth:`transform` with
        ``debias=True`` (exact one-hot, dense with explicit zeros, and the scaled numeric value).

        For serving where the LDP attributes are legitimately clear (e.g. an authorized consumer
        of ``clicks.protected``). Values map to domain indices exactly as the privatizer does
        (:meth:`stream.ldp.policy.LdpAttribute.index_of` / ``clamp``): None (absent) -> the
        :data:`NONE_VALUE` index if the domain has one; a value outside the domain -> the
        attribute's ``out_of_domain`` value if one is given; otherwise the attribute yields no
        features (as the privatizer reports nothing for it). Numeric values are clamped to
        ``[lo, hi]``; absent or non-numeric -> ``lo``. ``domains`` lists each categorical
        attribute's domain in schema order (including ``_none`` last for an optional one),
        ``bounds`` each numeric attribute's ``(lo, hi)``; attributes in neither are ignored.
        :meth:`stream.learn.model.PropensityModel.for_policy` fills all three from an
        :class:`~stream.ldp.policy.LdpPolicy`.
        """
        ood = out_of_domain or {}
        out: dict[str, float] = {}
        for attr, domain in domains.items():
            raw = values.get(attr)
            idx: int | None = None
            if raw is None:
                idx = _index(domain, NONE_VALUE)
            elif isinstance(raw, str):
                idx = _index(domain, raw)
            if idx is None and raw is not None and attr in ood:
                idx = _index(domain, ood[attr])
            if idx is None:
                continue
            names = self._feature_names(attr, len(domain))
            for name in names:
                out[name] = 0.0
            out[names[idx]] = 1.0
        for attr, (lo, hi) in bounds.items():
            raw = values.get(attr)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
                x = float(lo)
            else:
                x = min(float(hi), max(float(lo), float(raw)))
            out[attr] = scale_numeric(x, float(lo), float(hi))
        self._hour(out, hour_of_week)
        return out


def _index(domain: Sequence[str], value: str) -> int | None:
    try:
        return domain.index(value)
    except ValueError:
        return None
