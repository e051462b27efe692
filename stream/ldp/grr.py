"""Generalized randomized response (GRR, a.k.a. direct encoding / k-RR).

Wang, Blocki, Li, Jha, USENIX Security 2017, section 4.1: the user reports her
true value with probability ``p = e^eps / (e^eps + k - 1)`` and each other
value with probability ``q = 1 / (e^eps + k - 1)``; ``p / q = e^eps`` exactly.
A report is the perturbed domain index, an ``int``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

from stream.ldp.oracle import FrequencyOracle

__all__ = ["GRR", "grr_perturb"]


def grr_perturb(values: np.ndarray, d: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Randomized response over ``[0, d)``: keep each value with probability ``p``, else replace it
    by one of the ``d - 1`` other values uniformly (int64 array). Shared by GRR and OLH."""
    n = values.shape[0]
    keep = rng.random(n) < p
    other = rng.integers(0, d - 1, size=n, dtype=np.int64)
    other += other >= values  # skip the true value: uniform over the d-1 others
    return np.where(keep, values, other)


class GRR(FrequencyOracle):
    """Generalized randomized response over ``k`` values."""

    name: ClassVar[str] = "GRR"

    def __init__(self, k: int, epsilon: float) -> None:
        super().__init__(k, epsilon)
        e = math.exp(self.epsilon)
        self._p = e / (e + self.k - 1)
        self._q = 1.0 / (e + self.k - 1)

    @property
    def p(self) -> float:
        return self._p

    @property
    def q(self) -> float:
        return self._q

    def perturb_array(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """:meth:`perturb` as an int64 array (the same sampler)."""
        return grr_perturb(self._check_values(values), self.k, self._p, rng)

    def perturb(self, values: np.ndarray, rng: np.random.Generator) -> list[Any]:
        out: list[Any] = self.perturb_array(values, rng).tolist()
        return out

    def support(self, reports: Sequence[Any]) -> np.ndarray:
        arr = self._int_reports(reports, "GRR")
        if arr.ndim != 1:
            raise ValueError("GRR reports must be integers")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.k):
            raise ValueError(f"GRR reports must be indices in [0, {self.k})")
        return np.bincount(arr, minlength=self.k).astype(np.int64)

    def output_distribution(self, value: int) -> dict[Hashable, float]:
        if not 0 <= value < self.k:
            raise ValueError(f"value must be in [0, {self.k})")
        return {r: (self._p if r == value else self._q) for r in range(self.k)}

    def sample_support(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exact: the ``counts[v]`` holders of ``v`` report multinomially (p at v, q elsewhere)."""
        c = np.asarray(counts, dtype=np.int64)
        out = np.zeros(self.k, dtype=np.int64)
        for v in np.flatnonzero(c):
            probs = np.full(self.k, self._q)
            probs[v] = self._p
            out += rng.multinomial(int(c[v]), probs / probs.sum())
        return out
