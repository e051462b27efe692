"""Two-round (longitudinal) mechanisms: a memoized permanent round and a fresh instantaneous round.

RAPPOR (Erlingsson, Pihur, Korolova, CCS 2014) and Arcolezi, Couchot, Al Bouna, Xiao,
"Improving the utility of locally differentially private protocols for longitudinal
and multidimensional frequency estimates" (2022): a person's value ``v`` of an attribute
is first randomized once per (person, epoch, attribute, value) at ``eps_inf`` - the
*permanent* response ``x``, memoized - and every report then randomizes ``x`` afresh at
the instantaneous level, so that

* ``eps_inf`` (longitudinal) bounds what *all* reports of that value ever reveal: they
  are post-processing of ``x``, which is ``eps_inf``-LDP;
* ``eps_1`` (per report) bounds what *one* report reveals: the composite channel
  ``v -> x -> report`` is ``eps_1``-LDP, ``eps_1 < eps_inf``;
* two reports of one person are no longer identical: each carries fresh noise, so
  reports cannot be grouped by their contents into persons.

Mechanisms (the second-round parameters solved so that the composite is exactly
``eps_1``-LDP):

* **L-GRR**: GRR over ``k`` at ``eps_inf``, then GRR over ``k`` with ``p2`` chosen so that
  the composite keeps the value with ``P = e^eps1 / (e^eps1 + k - 1)``: marginally one
  report *is* a GRR(k, eps_1) report.
* **L-OSUE**: OUE bits at ``eps_inf`` (``p1 = 1/2``, ``q1 = 1/(e^eps_inf + 1)``), then every bit
  kept with ``p2`` / flipped (symmetric UE), ``p2 = (1 - q1 - 1/(e^eps1+1)) / (1 - 2 q1)``: the
  composite has ``P = 1/2``, ``Q = 1/(e^eps1 + 1)``, i.e. marginally an OUE(k, eps_1) report.
* **L-Duchi** (numeric, the one-bit memoization of Ding, Kulkarni, Yekhanin, "Collecting
  telemetry data privately", NeurIPS 2017, with Duchi's debiasing): a permanent bit with
  ``P[1] = 1/2 + t tanh(eps_inf/2) / 2`` for ``t`` in ``[-1, 1]``, then kept with ``p2`` where
  ``2 p2 - 1 = tanh(eps1/2) / tanh(eps_inf/2)``: marginally Duchi's mechanism at ``eps_1``, so
  the report is one of two numbers (no continuous output to fingerprint). Before the
  permanent round the value is rounded to a grid of :attr:`LongitudinalDuchi.GRID` + 1 points
  by Ding et al.'s alpha-point rounding: up iff its position in its cell exceeds ``alpha``,
  uniform and fixed per (person, epoch, attribute, cell). Over ``alpha`` the rounding is
  unbiased, and a person's prices in one cell share at most two memos instead of one per
  distinct price. One report's variance is unchanged: ``E[B^2 - t_r^2] + Var(t_r) = B^2 - t^2``.

Because one report is marginally the one-round oracle at ``eps_1``, a single report is
debiased and its variance computed exactly as for GRR / OUE / Duchi at ``eps_1``
(:attr:`LongitudinalMechanism.marginal`). What the two rounds add is the correlation of
reports sharing a permanent response: :meth:`between_variance` is the variance of
``E[support indicator | x]``, so ``c`` reports sharing one ``x`` have
``Var = c (s_w^2) + c^2 s_b^2`` with ``s_w^2 + s_b^2`` the one-report variance.
"""

from __future__ import annotations

import math
from typing import ClassVar, Union

import numpy as np

from stream.ldp.csprng import ChaChaRandom
from stream.ldp.grr import GRR
from stream.ldp.numeric import DuchiMechanism
from stream.ldp.oracle import check_epsilon
from stream.ldp.oue import INT_MASK_MAX_K, OUE

__all__ = [
    "LongitudinalDuchi",
    "LongitudinalGRR",
    "LongitudinalMechanism",
    "LongitudinalOUE",
    "Rng",
    "bernoulli",
]

Rng = Union[np.random.Generator, ChaChaRandom]  # noqa: UP007 - a runtime alias


def bernoulli(p: float | np.ndarray, shape: int | tuple[int, ...], rng: Rng) -> np.ndarray:
    """Independent Bernoulli(p) draws (bool array of ``shape``)."""
    return np.asarray(rng.random(shape)) < p


def _grr(values: np.ndarray, d: int, p: float, rng: Rng) -> np.ndarray:
    n = values.shape[0]
    keep = bernoulli(p, n, rng)
    other = np.asarray(rng.integers(0, d - 1, size=n, dtype=np.int64), dtype=np.int64)
    other += other >= values
    return np.where(keep, values, other)


class LongitudinalMechanism:
    """Common base: the two epsilons and the interface the privatizer and the aggregator use."""

    name: ClassVar[str]
    eps_inf: float
    eps_1: float

    def __init__(self, eps_inf: float, eps_1: float) -> None:
        self.eps_inf = check_epsilon(eps_inf)
        self.eps_1 = check_epsilon(eps_1)
        if not self.eps_1 < self.eps_inf:
            raise ValueError(f"the per-report epsilon ({eps_1}) must be below the longitudinal one ({eps_inf})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps_inf={self.eps_inf:g}, eps_1={self.eps_1:g})"

    def permanent(self, values: np.ndarray, rng: Rng) -> np.ndarray:  # pragma: no cover - abstract
        """The permanent (memoized) responses of ``values`` (int64 array)."""
        raise NotImplementedError

    def instantaneous(self, memos: np.ndarray, rng: Rng) -> np.ndarray:  # pragma: no cover - abstract
        """One fresh report per permanent response."""
        raise NotImplementedError

    def dummy_permanent(self, n: int, rng: Rng) -> np.ndarray:  # pragma: no cover - abstract
        """``n`` permanent responses of values drawn independently of any data (over-budget stand-ins)."""
        raise NotImplementedError


class _Categorical(LongitudinalMechanism):
    """Frequency estimation over reports that share permanent responses."""

    marginal: GRR | OUE

    def composite(self) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def between_variance(self) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def frequency_variance(self, n: int, f: np.ndarray | float, m: int = 1) -> np.ndarray:
        """Var of the frequency estimate ``(C/n - q)/(p - q)`` over ``n`` reports of which every
        permanent response contributes ``m`` (exact then; an upper bound if it contributes at most ``m``):
        ``[f (P(1-P) + (m-1) s_bv^2) + (1-f) (Q(1-Q) + (m-1) s_bo^2)] / (n (P-Q)^2)``."""
        p, q = self.marginal.p, self.marginal.q
        bv, bo = self.between_variance()
        fa = np.asarray(f, dtype=np.float64)
        per = fa * (p * (1 - p) + (m - 1) * bv) + (1 - fa) * (q * (1 - q) + (m - 1) * bo)
        out: np.ndarray = per / (n * (p - q) ** 2)
        return out


class LongitudinalGRR(_Categorical):
    """L-GRR over ``k`` values (reports: domain indices; marginally GRR(k, eps_1))."""

    name: ClassVar[str] = "L-GRR"

    def __init__(self, k: int, eps_inf: float, eps_1: float) -> None:
        super().__init__(eps_inf, eps_1)
        if k < 2:
            raise ValueError("k must be >= 2")
        self.k = int(k)
        e_inf, e1 = math.exp(self.eps_inf), math.exp(self.eps_1)
        self.p1 = e_inf / (e_inf + k - 1)
        self.q1 = 1.0 / (e_inf + k - 1)
        c = 1.0 / (k - 1)
        # composite: P = p1 p2 + (1-p1)(1-p2) c, Q = q1 p2 + (1-q1)(1-p2) c; solve P = e^eps1 Q for p2
        num = c * ((1.0 - self.p1) - e1 * (1.0 - self.q1))
        den = e1 * (self.q1 - (1.0 - self.q1) * c) - self.p1 + (1.0 - self.p1) * c
        self.p2 = num / den
        self.q2 = (1.0 - self.p2) * c
        self.marginal = GRR(self.k, self.eps_1)

    def permanent(self, values: np.ndarray, rng: Rng) -> np.ndarray:
        return _grr(np.asarray(values, dtype=np.int64), self.k, self.p1, rng)

    def instantaneous(self, memos: np.ndarray, rng: Rng) -> np.ndarray:
        return _grr(np.asarray(memos, dtype=np.int64), self.k, self.p2, rng)

    def dummy_permanent(self, n: int, rng: Rng) -> np.ndarray:
        return self.permanent(np.asarray(rng.integers(0, self.k, size=n, dtype=np.int64)), rng)

    def composite(self) -> tuple[float, float]:
        """``(P, Q)`` of one report: P[report = v | v], P[report = u | v] for u != v."""
        p = self.p1 * self.p2 + (1.0 - self.p1) * self.q2
        q = self.q1 * self.p2 + self.p1 * self.q2 + (self.k - 2) * self.q1 * self.q2
        return p, q

    def between_variance(self) -> tuple[float, float]:
        """Var of ``E[1(report = v) | x]`` for a person whose value is ``v`` / is not ``v``."""
        d2 = (self.p2 - self.q2) ** 2
        return d2 * self.p1 * (1.0 - self.p1), d2 * self.q1 * (1.0 - self.q1)


class LongitudinalOUE(_Categorical):
    """L-OSUE over ``k <= 62`` values (reports: int bitmasks; marginally OUE(k, eps_1))."""

    name: ClassVar[str] = "L-OSUE"

    def __init__(self, k: int, eps_inf: float, eps_1: float) -> None:
        super().__init__(eps_inf, eps_1)
        if not 2 <= k <= INT_MASK_MAX_K:
            raise ValueError(f"L-OSUE supports 2 <= k <= {INT_MASK_MAX_K}")
        self.k = int(k)
        self.p1 = 0.5
        self.q1 = 1.0 / (math.exp(self.eps_inf) + 1.0)
        q = 1.0 / (math.exp(self.eps_1) + 1.0)
        self.p2 = (1.0 - self.q1 - q) / (1.0 - 2.0 * self.q1)
        self._flip_threshold = np.uint64(round((1.0 - self.p2) * 2**32))
        self._weights = np.left_shift(np.uint64(1), np.arange(self.k, dtype=np.uint64))
        self.marginal = OUE(self.k, self.eps_1)
        self._prr = OUE(self.k, self.eps_inf)

    def _pack(self, bits: np.ndarray) -> np.ndarray:
        return (bits.astype(np.uint64) @ self._weights).astype(np.int64) if bits.size else np.zeros(
            bits.shape[0], dtype=np.int64)

    def permanent(self, values: np.ndarray, rng: Rng) -> np.ndarray:
        v = np.asarray(values, dtype=np.int64)
        bits = bernoulli(self.q1, (v.shape[0], self.k), rng)
        bits[np.arange(v.shape[0]), v] = bernoulli(0.5, v.shape[0], rng)
        return self._pack(bits)

    def instantaneous(self, memos: np.ndarray, rng: Rng) -> np.ndarray:
        m = np.asarray(memos, dtype=np.int64)
        n = m.shape[0]
        if isinstance(rng, ChaChaRandom):
            flips = rng.uint32(n * self.k).reshape(n, self.k).astype(np.uint64) < self._flip_threshold
        else:
            flips = bernoulli(1.0 - self.p2, (n, self.k), rng)
        return np.bitwise_xor(m, self._pack(flips))

    def dummy_permanent(self, n: int, rng: Rng) -> np.ndarray:
        return self.permanent(np.asarray(rng.integers(0, self.k, size=n, dtype=np.int64)), rng)

    def composite(self) -> tuple[float, float]:
        p = self.p1 * self.p2 + (1.0 - self.p1) * (1.0 - self.p2)
        q = self.q1 * self.p2 + (1.0 - self.q1) * (1.0 - self.p2)
        return p, q

    def between_variance(self) -> tuple[float, float]:
        d2 = (2.0 * self.p2 - 1.0) ** 2
        return d2 * self.p1 * (1.0 - self.p1), d2 * self.q1 * (1.0 - self.q1)


class LongitudinalDuchi(LongitudinalMechanism):
    """L-Duchi for a bounded number (reports: one of two values; marginally Duchi at eps_1)."""

    name: ClassVar[str] = "L-Duchi"
    #: cells of the rounding grid over [lo, hi]
    GRID: ClassVar[int] = 32

    def __init__(self, eps_inf: float, eps_1: float, lo: float, hi: float) -> None:
        super().__init__(eps_inf, eps_1)
        self.marginal = DuchiMechanism(self.eps_1, lo, hi)
        self.s1 = math.tanh(self.eps_inf / 2.0) / 2.0  # P1[1] = 1/2 + s1 t
        self.p2 = 0.5 + 0.5 * math.tanh(self.eps_1 / 2.0) / math.tanh(self.eps_inf / 2.0)
        self.lo, self.hi = self.marginal.lo, self.marginal.hi
        self.cell = (self.hi - self.lo) / self.GRID
        # the two reports, in attribute units
        self.low_report = float(self.marginal.from_unit(np.asarray(-self.marginal.B)))
        self.high_report = float(self.marginal.from_unit(np.asarray(self.marginal.B)))

    def cell_of(self, value: float) -> tuple[int, float]:
        """The value's grid cell and its position in it, in [0, 1]."""
        pos = (min(self.hi, max(self.lo, value)) - self.lo) / self.cell
        j = min(int(pos), self.GRID - 1)
        return j, pos - j

    def round_alpha(self, values: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Alpha-point rounding of clamped values to grid indices (0..GRID)."""
        pos = (np.clip(np.asarray(values, dtype=np.float64), self.lo, self.hi) - self.lo) / self.cell
        j = np.minimum(np.floor(pos), self.GRID - 1)
        return (j + (pos - j > alpha)).astype(np.int64)

    def grid_value(self, index: np.ndarray) -> np.ndarray:
        return self.lo + np.asarray(index, dtype=np.float64) * self.cell

    def permanent(self, values: np.ndarray, rng: Rng) -> np.ndarray:
        """Permanent bits of (already rounded, or any) values in attribute units."""
        t = self.marginal.to_unit(np.asarray(values, dtype=np.float64)).reshape(-1)
        return bernoulli(0.5 + self.s1 * t, t.shape[0], rng).astype(np.int64)

    def instantaneous(self, memos: np.ndarray, rng: Rng) -> np.ndarray:
        """Fresh bits (1 = the high report)."""
        m = np.asarray(memos, dtype=np.int64)
        keep = bernoulli(self.p2, m.shape[0], rng)
        return np.where(keep, m, 1 - m)

    def dummy_permanent(self, n: int, rng: Rng) -> np.ndarray:
        """Permanent bits of ``lo`` (what an absent value reports): a stand-in pulls the mean towards
        ``lo``, not towards the midpoint, which for skewed amounts (prices) is far the smaller bias."""
        return bernoulli(0.5 - self.s1, n, rng).astype(np.int64)

    def to_report(self, bits: np.ndarray) -> np.ndarray:
        """Bits -> the unbiased reports in attribute units."""
        return np.where(np.asarray(bits, dtype=bool), self.high_report, self.low_report)

    def between_variance_unit(self) -> float:
        """Worst case over the value of Var of ``E[report | x]`` in the scaled domain ([-1, 1])."""
        return (self.marginal.B * (2.0 * self.p2 - 1.0)) ** 2  # at P1 = 1/2
