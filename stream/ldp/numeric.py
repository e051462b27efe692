"""Bounded numeric values under local differential privacy: PM, Duchi and HM.

A value ``x`` is clamped to ``[lo, hi]`` and scaled to ``t in [-1, 1]``; the
mechanism outputs an unbiased randomized ``t*`` (``E[t* | t] = t``), mapped
back to original units as ``lo + (t* + 1) / 2 (hi - lo)``: an unbiased (and
possibly out-of-range) estimate of the clamped value. The mean of the reports
estimates the population mean.

* **Duchi** (Duchi, Jordan, Wainwright, "Minimax optimal procedures for locally
  private estimation", JASA 2018): ``t* = +-B`` with ``B = (e^eps+1)/(e^eps-1)``
  and ``P[t* = B] = 1/2 + t (e^eps - 1) / (2 (e^eps + 1))``; ``Var = B^2 - t^2``.
* **PM**, the piecewise mechanism (Wang, Xiao, Yang, Zhao, Hui, Shin, Shin, Yu,
  "Collecting and analyzing multidimensional data with local differential
  privacy", ICDE 2019): ``t*`` in ``[-C, C]`` with ``C = (e^(eps/2)+1)/(e^(eps/2)-1)``,
  density ``p = (e^eps - e^(eps/2)) / (2 e^(eps/2) + 2)`` on ``[l(t), r(t)]`` and
  ``p / e^eps`` elsewhere; ``Var = t^2/(e^(eps/2)-1) + (e^(eps/2)+3)/(3 (e^(eps/2)-1)^2)``.
* **HM**, the hybrid (same paper): for ``eps > eps* ~ 0.61`` PM with probability
  ``alpha = 1 - e^(-eps/2)``, else Duchi; for ``eps <= eps*`` always Duchi (the
  small-epsilon fallback). Both components are unbiased and eps-LDP, so is the mix.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import numpy as np

from stream.ldp.oracle import check_epsilon

__all__ = [
    "HM_EPS_STAR",
    "DuchiMechanism",
    "HybridMechanism",
    "NumericMechanism",
    "PiecewiseMechanism",
    "make_numeric",
    "mean_estimate",
    "mean_std_error",
]

#: The threshold eps* of the hybrid mechanism (Wang et al. ICDE 2019), ~0.6094.
HM_EPS_STAR = math.log(
    (-5.0 + 2.0 * (6353.0 - 405.0 * math.sqrt(241.0)) ** (1.0 / 3.0)
     + 2.0 * (6353.0 + 405.0 * math.sqrt(241.0)) ** (1.0 / 3.0)) / 27.0
)


class NumericMechanism(abc.ABC):
    """Common base: bounds, scaling to ``[-1, 1]`` and back, variance in original units."""

    name: ClassVar[str]

    def __init__(self, epsilon: float, lo: float, hi: float) -> None:
        self.epsilon = check_epsilon(epsilon)
        lo_f, hi_f = float(lo), float(hi)
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)) or lo_f >= hi_f:
            raise ValueError(f"numeric bounds must be finite with lo < hi, got [{lo!r}, {hi!r}]")
        self.lo, self.hi = lo_f, hi_f
        self._half = (hi_f - lo_f) / 2.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon:g}, lo={self.lo:g}, hi={self.hi:g})"

    def params(self) -> dict[str, float | str]:
        return {"mechanism": self.name, "epsilon": self.epsilon, "lo": self.lo, "hi": self.hi}

    # -- scaling ------------------------------------------------------------------------------------
    def to_unit(self, values: np.ndarray | float) -> np.ndarray:
        """Clamp to ``[lo, hi]`` and scale to ``[-1, 1]`` (ValueError on NaN)."""
        x = np.asarray(values, dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError("numeric values must not be NaN")
        return (np.clip(x, self.lo, self.hi) - self.lo) / self._half - 1.0

    def from_unit(self, t: np.ndarray) -> np.ndarray:
        """``lo + (t + 1) / 2 (hi - lo)``."""
        return self.lo + (np.asarray(t, dtype=np.float64) + 1.0) * self._half

    # -- the mechanism in the scaled domain ------------------------------------------------------------
    @abc.abstractmethod
    def perturb_unit(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unbiased randomized outputs for inputs ``t`` in ``[-1, 1]``."""

    @abc.abstractmethod
    def variance_unit(self, t: np.ndarray | float) -> np.ndarray | float:
        """``Var[t* | t]`` in the scaled domain."""

    def density(self, t_in: float, t_out: np.ndarray) -> np.ndarray:
        """The density of the continuous part of the output law at ``t_out`` (scaled domain).
        Point masses are in :meth:`output_distribution`. Default: no continuous part."""
        return np.zeros_like(np.asarray(t_out, dtype=np.float64))

    def output_distribution(self, t_in: float) -> dict[float, float]:
        """The point masses of the output law (scaled domain). Default: none."""
        return {}

    # -- original units -----------------------------------------------------------------------------
    def perturb(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One unbiased randomized report per value, in original units (float64 array)."""
        t = self.to_unit(values).reshape(-1)
        return self.from_unit(self.perturb_unit(t, rng))

    def variance(self, values: np.ndarray | float) -> np.ndarray | float:
        """``Var`` of one report for the (clamped) value(s), in original units."""
        t = self.to_unit(values)
        v = np.asarray(self.variance_unit(t), dtype=np.float64) * self._half**2
        if np.ndim(values) == 0:
            return float(v)
        return v

    def worst_case_variance(self) -> float:
        """``max_t Var`` of one report, in original units (the variance is quadratic in ``t``)."""
        return float(max(float(self.variance_unit(0.0)), float(self.variance_unit(1.0)))) * self._half**2


class DuchiMechanism(NumericMechanism):
    """Duchi et al.'s two-point mechanism (JASA 2018)."""

    name: ClassVar[str] = "Duchi"

    def __init__(self, epsilon: float, lo: float, hi: float) -> None:
        super().__init__(epsilon, lo, hi)
        e = math.exp(self.epsilon)
        self.B = (e + 1.0) / (e - 1.0)
        self._slope = (e - 1.0) / (2.0 * (e + 1.0))

    def params(self) -> dict[str, float | str]:
        return {**super().params(), "B": self.B}

    def prob_plus(self, t: np.ndarray | float) -> np.ndarray:
        return 0.5 + self._slope * np.asarray(t, dtype=np.float64)

    def perturb_unit(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        plus = rng.random(t.shape[0]) < self.prob_plus(t)
        return np.where(plus, self.B, -self.B)

    def variance_unit(self, t: np.ndarray | float) -> np.ndarray | float:
        return self.B**2 - np.square(t)

    def output_distribution(self, t_in: float) -> dict[float, float]:
        pp = float(self.prob_plus(t_in))
        return {self.B: pp, -self.B: 1.0 - pp}


class PiecewiseMechanism(NumericMechanism):
    """The piecewise mechanism of Wang et al. (ICDE 2019)."""

    name: ClassVar[str] = "PM"

    def __init__(self, epsilon: float, lo: float, hi: float) -> None:
        super().__init__(epsilon, lo, hi)
        e2 = math.exp(self.epsilon / 2.0)
        self._e2 = e2
        self.C = (e2 + 1.0) / (e2 - 1.0)
        self._p_in = e2 / (e2 + 1.0)  # P[output in [l(t), r(t)]]
        self.p_high = (math.exp(self.epsilon) - e2) / (2.0 * e2 + 2.0)  # density on [l, r]
        self.p_low = self.p_high / math.exp(self.epsilon)  # density elsewhere on [-C, C]

    def params(self) -> dict[str, float | str]:
        return {**super().params(), "C": self.C}

    def interval(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """``l(t) = (C+1)/2 t - (C-1)/2`` and ``r(t) = l(t) + C - 1``."""
        lt = (self.C + 1.0) / 2.0 * np.asarray(t, dtype=np.float64) - (self.C - 1.0) / 2.0
        return lt, lt + self.C - 1.0

    def perturb_unit(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = t.shape[0]
        lt, rt = self.interval(t)
        inside = rng.random(n) < self._p_in
        u = rng.random(n)
        mid = lt + u * (self.C - 1.0)
        # uniform on [-C, l) U (r, C]: total length C + 1
        w = u * (self.C + 1.0)
        left_len = lt + self.C
        out = np.where(w < left_len, -self.C + w, rt + (w - left_len))
        return np.where(inside, mid, out)

    def variance_unit(self, t: np.ndarray | float) -> np.ndarray | float:
        e2 = self._e2
        return np.square(t) / (e2 - 1.0) + (e2 + 3.0) / (3.0 * (e2 - 1.0) ** 2)

    def density(self, t_in: float, t_out: np.ndarray) -> np.ndarray:
        x = np.asarray(t_out, dtype=np.float64)
        lt, rt = self.interval(t_in)
        inside = (x >= lt) & (x <= rt)
        return np.where(np.abs(x) <= self.C, np.where(inside, self.p_high, self.p_low), 0.0)


class HybridMechanism(NumericMechanism):
    """The hybrid mechanism of Wang et al. (ICDE 2019): PM w.p. alpha, else Duchi."""

    name: ClassVar[str] = "HM"

    def __init__(self, epsilon: float, lo: float, hi: float) -> None:
        super().__init__(epsilon, lo, hi)
        self.pm = PiecewiseMechanism(epsilon, lo, hi)
        self.duchi = DuchiMechanism(epsilon, lo, hi)
        self.alpha = 1.0 - math.exp(-self.epsilon / 2.0) if self.epsilon > HM_EPS_STAR else 0.0

    def params(self) -> dict[str, float | str]:
        return {**super().params(), "alpha": self.alpha, "C": self.pm.C, "B": self.duchi.B}

    def perturb_unit(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.alpha == 0.0:
            return self.duchi.perturb_unit(t, rng)
        use_pm = rng.random(t.shape[0]) < self.alpha
        out = np.empty(t.shape[0], dtype=np.float64)
        out[use_pm] = self.pm.perturb_unit(t[use_pm], rng)
        out[~use_pm] = self.duchi.perturb_unit(t[~use_pm], rng)
        return out

    def variance_unit(self, t: np.ndarray | float) -> np.ndarray | float:
        # both components are unbiased: the mixture's variance is the mixture of variances
        return self.alpha * self.pm.variance_unit(t) + (1.0 - self.alpha) * self.duchi.variance_unit(t)

    def density(self, t_in: float, t_out: np.ndarray) -> np.ndarray:
        return self.alpha * self.pm.density(t_in, t_out)

    def output_distribution(self, t_in: float) -> dict[float, float]:
        return {o: (1.0 - self.alpha) * pr for o, pr in self.duchi.output_distribution(t_in).items()}


_NUMERIC: dict[str, type[NumericMechanism]] = {
    "numeric": HybridMechanism,
    "HM": HybridMechanism,
    "PM": PiecewiseMechanism,
    "Duchi": DuchiMechanism,
}


def make_numeric(epsilon: float, lo: float, hi: float, hint: str | None = None) -> NumericMechanism:
    """The numeric mechanism for ``hint`` (None or "numeric" -> HM; "PM"; "HM"; "Duchi")."""
    if hint is None:
        return HybridMechanism(epsilon, lo, hi)
    try:
        cls = _NUMERIC[hint]
    except (KeyError, TypeError):
        raise ValueError(f"unknown numeric mechanism {hint!r} (expected one of {sorted(_NUMERIC)})") from None
    return cls(epsilon, lo, hi)


def mean_estimate(reports: np.ndarray) -> float:
    """The unbiased mean estimate: the mean of the reports (ValueError if there are none)."""
    r = np.asarray(reports, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no reports")
    return float(r.mean())


def mean_std_error(mech: NumericMechanism, n: int, mean_guess: float | None = None) -> float:
    """Standard error of :func:`mean_estimate` over ``n`` reports, from the closed-form variance
    at ``mean_guess`` (None: the worst case over ``[lo, hi]``, a conservative bound).

    The exact figure is ``sqrt(mean_i Var(x_i) / n)``; Var is quadratic in the value (convex for
    PM, concave for Duchi), so evaluating it at the mean is an approximation unless the values
    are concentrated."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n!r}")
    var = mech.worst_case_variance() if mean_guess is None else float(mech.variance(float(mean_guess)))
    return math.sqrt(var / n)
