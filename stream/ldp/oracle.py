"""Frequency oracles for categorical values under local differential privacy.

A frequency oracle is a pair of algorithms (Wang, Blocki, Li, Jha, "Locally
Differentially Private Protocols for Frequency Estimation", USENIX Security
2017): each user randomizes her value in a domain ``[0, k)`` into a *report*;
the aggregator counts, for every value ``v``, how many reports *support* ``v``
and debiases the count. All three oracles here (GRR, OUE, OLH) are "pure":
a report supports the user's true value with probability ``p`` and any other
given value with probability ``q``, so

    estimate(v) = (C(v)/n - q) / (p - q)            (unbiased)
    Var         = q(1-q) / (n (p-q)^2) + f (1-p-q) / (n (p-q))

where ``f`` is the true frequency of ``v`` (Wang et al. 2017, Theorem 2).

Randomness: every randomized method takes a ``numpy.random.Generator`` (tests,
benchmarks) or, in production, :func:`secure_rng`: a ChaCha20 keystream keyed
from the operating system's CSPRNG (:class:`stream.ldp.csprng.ChaChaRandom`),
never a non-cryptographic generator whose state its outputs would reveal.

:func:`choose_oracle` picks the mechanism with the smaller variance: GRR iff
``k < 3 e^eps + 2``, else OLH (the same variance as OUE with a report of three
integers instead of ``k`` bits).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

from stream.ldp.csprng import ChaChaRandom

__all__ = [
    "FrequencyOracle",
    "check_epsilon",
    "secure_rng",
]


def secure_rng() -> ChaChaRandom:
    """A fresh production noise source: ChaCha20 keyed with 256 bits from the OS CSPRNG."""
    return ChaChaRandom()


def check_epsilon(epsilon: float) -> float:
    """``epsilon`` as a float; ValueError unless it is finite and > 0."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.integer | np.floating):
        raise ValueError(f"epsilon must be a number, got {epsilon!r}")
    eps = float(epsilon)
    if not math.isfinite(eps) or eps <= 0.0:
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    return eps


class FrequencyOracle(abc.ABC):
    """Common base: parameters, debiasing and the closed-form variance (Wang et al. 2017)."""

    name: ClassVar[str]
    k: int
    epsilon: float

    def __init__(self, k: int, epsilon: float) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
            raise ValueError(f"domain size k must be an integer >= 2, got {k!r}")
        self.k = int(k)
        self.epsilon = check_epsilon(epsilon)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, epsilon={self.epsilon:g})"

    # -- the support probabilities ------------------------------------------------------------
    @property
    @abc.abstractmethod
    def p(self) -> float:
        """P[a report supports the user's true value]."""

    @property
    @abc.abstractmethod
    def q(self) -> float:
        """P[a report supports a given value other than the user's]."""

    def params(self) -> dict[str, float | int]:
        """Everything a consumer needs to debias reports."""
        return {"k": self.k, "epsilon": self.epsilon, "p": self.p, "q": self.q}

    # -- client side ------------------------------------------------------------------------------
    def _check_values(self, values: np.ndarray | Sequence[int]) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer) and not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError("values must be integer domain indices")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.k):
            raise ValueError(f"values must be domain indices in [0, {self.k})")
        return arr

    @staticmethod
    def _int_reports(reports: Sequence[Any], what: str) -> np.ndarray:
        """Reports as an int64 array; ValueError for anything but integers (no silent truncation)."""
        try:
            arr = np.asarray(reports)
        except ValueError:  # ragged
            raise ValueError(f"malformed {what} reports") from None
        if arr.size == 0:
            return arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.uint64:
            raise ValueError(f"{what} reports must be integers")
        return arr.astype(np.int64)

    @abc.abstractmethod
    def perturb(self, values: np.ndarray, rng: np.random.Generator) -> list[Any]:
        """One JSON-ready report per value (``values``: int indices in ``[0, k)``)."""

    # -- aggregator side -------------------------------------------------------------------------
    @abc.abstractmethod
    def support(self, reports: Sequence[Any]) -> np.ndarray:
        """Shape ``(k,)`` int64: the number of reports that support each value."""

    def estimate(self, support: np.ndarray, n: int) -> np.ndarray:
        """Unbiased frequency estimates ``(C/n - q) / (p - q)`` (fractions; may be < 0 or > 1)."""
        if n <= 0:
            raise ValueError(f"n must be > 0, got {n!r}")
        c = np.asarray(support, dtype=np.float64)
        if c.shape != (self.k,):
            raise ValueError(f"support must have shape ({self.k},), got {c.shape}")
        return (c / n - self.q) / (self.p - self.q)

    def variance(self, n: int, f: np.ndarray | float = 0.0) -> np.ndarray | float:
        """Exact variance of :meth:`estimate` for a value of true frequency ``f`` among ``n`` reports:
        ``q(1-q) / (n (p-q)^2) + f (1-p-q) / (n (p-q))`` (for OLH under the paper's q = 1/g)."""
        if n <= 0:
            raise ValueError(f"n must be > 0, got {n!r}")
        p, q = self.p, self.q
        base = q * (1.0 - q) / (n * (p - q) ** 2)
        slope = (1.0 - p - q) / (n * (p - q))
        if np.ndim(f) == 0:
            return base + slope * float(f)
        return base + slope * np.asarray(f, dtype=np.float64)

    # -- exact distribution (epsilon tests) ---------------------------------------------------------
    @abc.abstractmethod
    def output_distribution(self, value: int) -> dict[Hashable, float]:
        """The exact probability of every possible report for input ``value`` (small k only)."""

    def sample_support(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw the support vector of ``n = sum(counts)`` users (``counts[v]`` of them hold ``v``)
        directly from its exact distribution. Default: the real path (:meth:`perturb` then
        :meth:`support`); oracles override it with an exactly equivalent vectorized sampler."""
        c = np.asarray(counts, dtype=np.int64)
        values = np.repeat(np.arange(self.k, dtype=np.int64), c)
        return self.support(self.perturb(values, rng))
