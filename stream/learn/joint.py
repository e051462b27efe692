"""Naive Bayes from joint (attribute value, label) reports: the learner of issue 22.

Input: ``private-example.v2`` records (:mod:`stream.ldp.examples`): each person-epoch sends one
report of one attribute ``j`` drawn with fixed, data-independent probabilities, the pair ``(v, y)`` randomized over the ``2 k_j``
joint cells at the full epsilon (GRR or OUE). Parsed strictly by :meth:`JointReport.from_dict`
(:class:`~stream.errors.InvalidExampleError` for anything else).

What is estimated, and how exactly:

* **Unbiased**: per attribute, ``D_j[c] / n_j`` with ``D_j[c] = sum over its reports of
  (s_c - q) / (p - q)`` (``s_c`` = the report supports cell ``c``) is an unbiased estimate of the
  share ``f_j(c)`` of person-examples whose (value of ``j``, label) is ``c``: the attribute is drawn
  independently of the data, so the reports of ``j`` are a uniform subsample. ``D_j`` and ``n_j``
  are sums, so learning is order-free and federated sums are exact (:meth:`parameters`).
* **Approximate**: naive Bayes itself (attributes independent given the label); per value the
  conditional ``P(1 | v)`` is the ratio of the clipped shares (plus ``smoothing`` counts), shrunk by
  random effects toward its attribute's precision-weighted mean in proportion to its delta-method
  noise (:func:`_conditionals`): biased post-processing whose bias vanishes as people grow; an
  attribute whose values do not differ beyond their noise gets one constant weight (dropped). The
  log-odds are a non-linear function of unbiased shares: consistent, not unbiased.
* **Known**: the value that makes the label 1 by its definition (``ExampleSpec.positive``: event type
  ``purchase``) has ``P(1 | v) = 1``: it is not estimated, and enters the shrinkage at that value.

The served model is a River :class:`~river.linear_model.LogisticRegression` whose weights are the
naive-Bayes log-odds ``w[j=v] = log P(v | 1) - log P(v | 0) = logit P(1 | v) - logit pi`` and intercept ``log(pi / (1 - pi))``
(naive Bayes on one-hot categories is exactly this linear model); it is refreshed from the sums
whenever they changed, so the model learns incrementally (one report = one update of ``D_j``).
The same class on clear examples (:meth:`learn_clear`: every attribute counted exactly) is the
non-private baseline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from river import linear_model, utils

from stream.errors import InvalidExampleError
from stream.ldp.examples import HOUR_ATTRIBUTE, JOINT_SCHEMA, ExampleSpec
from stream.learn.example import MAX_DOMAIN, MAX_EPSILON

__all__ = ["JOINT_SCHEMA", "JointNaiveBayes", "JointReport"]

_SOURCE_RE = re.compile(r"[a-z0-9.-]+")
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_HEX_RE = re.compile(r"[0-9a-f]+")
_KEYS = frozenset({"schema", "source_schema", "attribute", "d", "m", "eps", "k", "r"})


@dataclass(frozen=True, slots=True)
class JointReport:
    """One parsed ``private-example.v2`` record. ``value``: the GRR cell, or the OUE bitmask."""

    source_schema: str
    attribute: str
    d: int
    mechanism: str
    epsilon: float
    k: int
    value: int

    @classmethod
    def from_json(cls, data: bytes | str) -> JointReport:
        try:
            doc = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            raise InvalidExampleError("not valid JSON") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> JointReport:
        if not isinstance(doc, Mapping) or doc.get("schema") != JOINT_SCHEMA:
            raise InvalidExampleError(f"not a {JOINT_SCHEMA} record")
        if set(doc) != _KEYS:
            raise InvalidExampleError(f"{JOINT_SCHEMA}: expected exactly the fields {sorted(_KEYS)}")
        src, attr, d, m, eps, k, r = (doc[f] for f in ("source_schema", "attribute", "d", "m", "eps", "k", "r"))
        if not isinstance(src, str) or not _SOURCE_RE.fullmatch(src):
            raise InvalidExampleError(f"{JOINT_SCHEMA}: malformed source_schema")
        if not isinstance(attr, str) or not _NAME_RE.fullmatch(attr):
            raise InvalidExampleError(f"{JOINT_SCHEMA}: malformed attribute")
        if type(d) is not int or not 1 <= d <= 256:
            raise InvalidExampleError(f"{JOINT_SCHEMA}: d must be an integer in [1, 256]")
        if m not in ("GRR", "OUE"):
            raise InvalidExampleError(f"{JOINT_SCHEMA}: unknown mechanism")
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps <= MAX_EPSILON:
            raise InvalidExampleError(f"{JOINT_SCHEMA}: eps must be in (0, {MAX_EPSILON:g}]")
        if type(k) is not int or not 4 <= k <= 2 * MAX_DOMAIN or k % 2:
            raise InvalidExampleError(f"{JOINT_SCHEMA}: k must be an even integer in [4, {2 * MAX_DOMAIN}]")
        if m == "GRR":
            if type(r) is not int or not 0 <= r < k:
                raise InvalidExampleError(f"{JOINT_SCHEMA}: GRR r must be an integer in [0, k)")
            value = r
        else:
            if isinstance(r, str) and _HEX_RE.fullmatch(r):
                value = int(r, 16)
            elif type(r) is int:
                value = r
            else:
                raise InvalidExampleError(f"{JOINT_SCHEMA}: OUE r must be an integer or lowercase hex")
            if not 0 <= value < (1 << k):
                raise InvalidExampleError(f"{JOINT_SCHEMA}: OUE r must be a bitmask of k bits")
        return cls(src, attr, d, m, float(eps), k, value)

    def pq(self) -> tuple[float, float]:
        """(p, q): the probability that the report supports its true cell, and any other cell."""
        e = math.exp(self.epsilon)
        if self.mechanism == "GRR":
            return e / (e + self.k - 1), 1.0 / (e + self.k - 1)
        return 0.5, 1.0 / (e + 1.0)

    @property
    def label(self) -> int | None:
        """The *randomized* label bit a GRR report shows (its cell's parity); None for OUE (a
        bitmask names no single cell). For the worker's progressive metric only."""
        return self.value & 1 if self.mechanism == "GRR" else None

    def support(self) -> np.ndarray:
        """The 0/1 support indicator of every cell."""
        s = np.zeros(self.k, dtype=np.float64)
        if self.mechanism == "GRR":
            s[self.value] = 1.0
        else:
            v = self.value
            for c in range(self.k):
                if v >> c & 1:
                    s[c] = 1.0
        return s


class JointNaiveBayes:
    """Naive Bayes on joint reports (module docstring). Verbs: :meth:`learn_one` (a
    :class:`JointReport`), :meth:`learn_clear` (the non-private baseline), :meth:`predict_proba_event`
    (clear values), :meth:`parameters` / :meth:`set_parameters` (additive sums, for federation).

    ``smoothing``: a pseudo-count (in reports) added to each value's share. ``shrink``: random-effects
    shrinkage of the conditionals in proportion to their noise (the mechanism's and the sampling's:
    clear counts are shrunk too, much less).
    """

    additive = True  # parameters are sums: federated merges add the deltas

    def __init__(self, spec: ExampleSpec, *, name: str = "purchase-propensity", smoothing: float = 0.5,
                 shrink: bool = True, seed: int | None = None) -> None:
        if not (math.isfinite(smoothing) and smoothing >= 0):
            raise ValueError("smoothing must be a finite number >= 0")
        self.name = name
        self.spec = spec
        self.smoothing = float(smoothing)
        self.shrink = bool(shrink)
        self.seed = seed
        self.correction = True
        self.debias = True
        self.k = {a.name: a.k for a in spec.attributes}
        self.sums = {a.name: np.zeros(2 * a.k) for a in spec.attributes}  # D_j
        self.var = {a.name: 0.0 for a in spec.attributes}  # sum over reports of the per-cell noise variance
        self.n = {a.name: 0.0 for a in spec.attributes}  # n_j
        self.examples_seen = 0
        self.regression = linear_model.LogisticRegression()
        self._dirty = True

    @classmethod
    def for_policy(cls, policy: Any, **kwargs: Any) -> JointNaiveBayes:
        return cls(ExampleSpec.from_policy(policy), **kwargs)

    def __repr__(self) -> str:
        return f"JointNaiveBayes(name={self.name!r}, smoothing={self.smoothing:g}, examples_seen={self.examples_seen})"

    # -- learning ---------------------------------------------------------------------------------
    def learn_one(self, report: JointReport) -> None:
        if not isinstance(report, JointReport):
            raise TypeError(f"JointNaiveBayes.learn_one takes a JointReport, not {type(report).__name__}")
        k = self.k.get(report.attribute)
        if k is None or report.k != 2 * k:
            raise InvalidExampleError(f"{JOINT_SCHEMA}: attribute or domain not in the model's schema")
        p, q = report.pq()
        self.sums[report.attribute] += (report.support() - q) / (p - q)
        self.var[report.attribute] += q * (1 - q) / (p - q) ** 2
        self.n[report.attribute] += 1.0
        self.examples_seen += 1
        self._dirty = True

    def learn_clear(self, indices: Sequence[int], label: int) -> None:
        """One clear example, every attribute counted exactly (the non-private baseline)."""
        for a, v in zip(self.spec.attributes, indices, strict=True):
            self.sums[a.name][2 * int(v) + int(label)] += 1.0
            self.n[a.name] += 1.0
        self.examples_seen += 1
        self._dirty = True

    def learn_many_clear(self, indices: np.ndarray, labels: np.ndarray) -> None:
        idx = np.asarray(indices, dtype=np.int64)
        y = np.asarray(labels, dtype=np.int64)
        for j, a in enumerate(self.spec.attributes):
            self.sums[a.name] += np.bincount(2 * idx[:, j] + y, minlength=2 * a.k).astype(np.float64)
            self.n[a.name] += float(len(y))
        self.examples_seen += len(y)
        self._dirty = True

    # -- the fit ----------------------------------------------------------------------------------
    def shares(self, attribute: str) -> np.ndarray:
        """The unbiased estimate of the joint shares ``f_j``, shape ``(k_j, 2)`` (nan before any report)."""
        n = self.n[attribute]
        return (self.sums[attribute] / n if n else np.full(2 * self.k[attribute], np.nan)).reshape(-1, 2)

    def log_odds(self) -> tuple[dict[str, float], float]:
        """The naive-Bayes weights ``{"attr=index": logit P(1|v) - logit pi}`` (= ``log P(v|1) - log P(v|0)``)
        and the intercept ``logit pi``; per attribute, the conditionals ``P(1|v)`` are shrunk toward their
        precision-weighted mean by random effects (:func:`_conditionals`)."""
        pos = tot = 0.0
        for name, n in self.n.items():
            if n:
                f = self.shares(name)
                pos += n * float(f[:, 1].sum())
                tot += n * float(f.sum())
        if tot <= 0:
            return {}, 0.0
        total_n = sum(self.n.values())
        pi = min(max(pos / tot, 1.0 / (total_n + 2)), 1.0 - 1.0 / (total_n + 2))
        base = math.log(pi / (1.0 - pi))
        weights: dict[str, float] = {}
        for name, n in self.n.items():
            if not n:
                continue  # never reported (a zero draw probability): weight 0
            known = self.spec.positive[1] if self.spec.positive and self.spec.positive[0] == name else None
            theta = _conditionals(self.shares(name), n, self.var[name], self.smoothing, self.shrink, known)
            for v, t in enumerate(theta.tolist()):
                weights[f"{name}={v}"] = math.log(t / (1.0 - t)) - base
        return weights, base

    def _refresh(self) -> None:
        if self._dirty:
            weights, b = self.log_odds()
            self.regression._weights = utils.VectorDict(weights)
            self.regression.intercept = b
            self._dirty = False

    # -- serving ----------------------------------------------------------------------------------
    def features(self, indices: Sequence[int]) -> dict[str, float]:
        return {f"{a.name}={int(v)}": 1.0 for a, v in zip(self.spec.attributes, indices, strict=True)}

    def predict_proba_indices(self, indices: Sequence[int]) -> float:
        self._refresh()
        return float(self.regression.predict_proba_one(self.features(indices)).get(True, 0.0))

    def predict_many_indices(self, indices: np.ndarray) -> np.ndarray:
        """Vectorized :meth:`predict_proba_indices` (the same weights)."""
        self._refresh()
        idx = np.asarray(indices, dtype=np.int64)
        z = np.full(idx.shape[0], float(self.regression.intercept))
        w = self.regression.weights
        for j, a in enumerate(self.spec.attributes):
            table = np.asarray([float(w.get(f"{a.name}={v}", 0.0)) for v in range(a.k)])
            z += table[idx[:, j]]
        return 1.0 / (1.0 + np.exp(-z))

    def predict_proba_one(self, report: JointReport) -> float | None:
        """For the worker's progressive metric: ``P(y = 1 | value of the reported attribute)`` at the
        value a GRR report shows (intercept + that weight), None for an OUE report. A proxy against
        randomized labels, not a served prediction."""
        if not isinstance(report, JointReport):
            raise TypeError(f"JointNaiveBayes.predict_proba_one takes a JointReport, not {type(report).__name__}")
        if report.mechanism != "GRR" or report.attribute not in self.k:
            return None
        self._refresh()
        z = float(self.regression.intercept) + float(self.regression.weights.get(f"{report.attribute}={report.value >> 1}", 0.0))
        return 1.0 / (1.0 + math.exp(-z))

    def predict_proba_event(self, values: Mapping[str, Any], hour_of_week: int | None = None) -> float:
        """``P(label = 1)`` from clear LDP values (and the hour of week of the event)."""
        hour = None if hour_of_week is None else hour_of_week % 24
        enc = self.spec.encode(values, hour)
        if enc is None:
            raise ValueError("a value cannot be mapped to the model's domains")
        return self.predict_proba_indices(enc)

    def weights(self, *, named: bool = True) -> dict[str, float]:
        self._refresh()
        raw = {str(k): float(v) for k, v in self.regression.weights.items()}
        if not named:
            return raw
        by = self.spec.by_name
        out = {}
        for key, w in raw.items():
            attr, _, idx = key.partition("=")
            a = by.get(attr)
            out[f"{attr}={a.values[int(idx)]}" if a is not None and attr != HOUR_ATTRIBUTE else key] = w
        return out

    @property
    def intercept(self) -> float:
        self._refresh()
        return float(self.regression.intercept)

    # -- pickling (snapshots): plain types only, the River model is rebuilt from the sums -------------
    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "smoothing": self.smoothing, "shrink": self.shrink,
                "seed": self.seed, "sums": {k: [float(x) for x in v] for k, v in self.sums.items()},
                "var": dict(self.var), "n": dict(self.n), "examples_seen": self.examples_seen}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], name=state["name"], smoothing=state["smoothing"],  # type: ignore[misc]
                      shrink=state["shrink"], seed=state["seed"])
        for k, v in state["sums"].items():
            if k not in self.sums or len(v) != len(self.sums[k]):
                raise ValueError("snapshot state does not match its spec")
            self.sums[k] = np.asarray(v, dtype=np.float64)
        self.var.update({k: float(v) for k, v in state["var"].items() if k in self.var})
        self.n.update({k: float(v) for k, v in state["n"].items() if k in self.n})
        self.examples_seen = int(state["examples_seen"])

    # -- federation: additive sufficient statistics -----------------------------------------------
    def parameters(self) -> tuple[dict[str, float], float]:
        """The sums ``D_j`` (``"D:attr=cell"``), noise variances (``"V:attr"``) and counts (``"N:attr"``);
        the intercept slot is unused (0). Sums: a merge adds deltas exactly."""
        out: dict[str, float] = {}
        for name, s in self.sums.items():
            for c, x in enumerate(s.tolist()):
                out[f"D:{name}={c}"] = x
            out[f"V:{name}"] = self.var[name]
            out[f"N:{name}"] = self.n[name]
        return out, 0.0

    def set_parameters(self, weights: Mapping[str, float], intercept: float) -> None:
        del intercept
        for name in self.sums:
            s = self.sums[name]
            for c in range(len(s)):
                s[c] = float(weights.get(f"D:{name}={c}", 0.0))
            self.var[name] = float(weights.get(f"V:{name}", 0.0))
            self.n[name] = float(weights.get(f"N:{name}", 0.0))
        self._dirty = True


#: conditionals are kept in [THETA_CLIP, 1 - THETA_CLIP] (a weight is at most about 7 from the intercept)
THETA_CLIP = 1e-3


def _conditionals(shares: np.ndarray, n: float, var: float, smoothing: float, shrink: bool,
                  known: int | None = None) -> np.ndarray:
    """``P(1 | v)`` per value from the (unbiased) joint shares ``(k, 2)`` of ``n`` reports whose summed per-cell
    noise variance is ``var`` (0 for clear counts).

    ``theta_v = f(v,1) / (f(v) + smoothing / n)`` on the clipped shares, with its delta-method variance (the
    mechanism's ``var / n^2`` per cell, plus the binomial sampling term; a share is floored at one standard
    error in the variance so a value that happens to look empty is not trusted). ``shrink``: random effects
    (Paule-Mandel, as in meta-analysis): ``theta_v <- mu + (theta_v - mu) tau^2 / (tau^2 + var_v)`` with the
    between-value variance ``tau^2`` and the precision-weighted mean ``mu`` estimated from the attribute's own
    values, so an attribute whose values do not differ beyond their noise gets ``tau^2 = 0``: one constant
    weight, i.e. it is dropped. (A line over a numeric attribute's bins as the mean was tried: its slope, fitted
    on noise at eps 2, cost more than it gained.) ``known``: the value whose ``P(1 | v) = 1`` by the label's
    definition (:attr:`~stream.ldp.examples.ExampleSpec.positive`): it enters the random effects at that
    value, without noise, and is served as such."""
    s2 = var / n**2
    f = np.clip(shares, 0.0, None)
    fv = f.sum(axis=1) + smoothing / n
    theta = np.clip(np.divide(f[:, 1], fv, out=np.zeros_like(fv), where=fv > 0), 0.0, 1.0)  # smoothing 0: 0/0
    if shrink:
        ff = np.maximum(fv, math.sqrt(s2) if s2 else 1.0 / n)
        v = s2 * (f[:, 0] ** 2 + f[:, 1] ** 2) / ff**4 + (theta * (1.0 - theta) + 1.0 / (n * ff)) / (n * ff)
        v = np.maximum(v, s2 / (2.0 * ff**2))
        if known is not None:
            theta[known], v[known] = 1.0 - THETA_CLIP, 1e-12
        tau2, fit = _paule_mandel(theta, v)
        theta = fit + (theta - fit) * tau2 / (tau2 + v)
    if known is not None:
        theta[known] = 1.0
    return np.asarray(np.clip(theta, THETA_CLIP, 1.0 - THETA_CLIP))


def _paule_mandel(y: np.ndarray, v: np.ndarray, x: np.ndarray | None = None,
                  iters: int = 60) -> tuple[float, np.ndarray]:
    """Random-effects (meta-regression) between-value variance ``tau^2`` and fitted means ``x b`` of estimates
    ``y`` with variances ``v``: the ``tau^2 >= 0`` at which the generalized Q statistic (weighted least squares
    at weights ``1 / (v + tau^2)``) equals its degrees of freedom ``k - p`` (bisection)."""
    x = np.ones((len(y), 1)) if x is None else x
    df = len(y) - x.shape[1]

    def q(t: float) -> tuple[float, np.ndarray]:
        sw = np.sqrt(1.0 / (v + t))
        b = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)[0]
        fit = x @ b
        return float((((y - fit) * sw) ** 2).sum()) - df, fit

    q0, fit0 = q(0.0)
    if df < 1 or q0 <= 0:
        return 0.0, fit0
    lo, hi = 0.0, float(np.var(y)) + float(v.max())
    while q(hi)[0] > 0:
        hi *= 2.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if q(mid)[0] > 0:
            lo = mid
        else:
            hi = mid
    return lo, q(lo)[1]
