"""Optimized local hashing (OLH).

Wang, Blocki, Li, Jha, USENIX Security 2017, section 4.4: each user draws a
hash function ``h`` from a universal family mapping ``[0, k)`` to ``[0, g)``
with ``g = round(e^eps) + 1`` (at least 2), and reports ``h`` together with
``y = GRR_g(h(v))``: ``h(v)`` kept with probability ``p = e^eps / (e^eps + g - 1)``,
else one of the other ``g - 1`` buckets uniformly. The hash is public and
independent of the value, so given ``h`` the report is GRR over ``g`` buckets
and its likelihood ratio is at most ``e^eps`` exactly.

A report supports ``v`` iff ``h(v) == y``: with probability ``p`` for the
user's value and ``q = P[h(u) = h(v)] p + (1 - P[h(u) = h(v)]) (1-p)/(g-1)``
for another value ``u``, which is ``1/g`` when collisions have probability
``1/g``.

Hash family: ``h(v) = ((a v + b) mod P) mod g`` with the Mersenne prime
``P = 2^31 - 1``, ``a`` uniform in ``[1, P-1]``, ``b`` uniform in ``[0, P-1]``,
drawn per report. The report is the JSON list ``[a, b, y]``. ``(a v + b) mod P``
is 2-universal (pairwise uniform over distinct pairs), so for ``u != v`` the
collision probability after ``mod g`` differs from ``1/g`` by at most ``g / P``
(< 3e-8 for any sensible epsilon): negligible, and the estimator uses
``q = 1/g`` as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

from stream.ldp.grr import grr_perturb
from stream.ldp.oracle import FrequencyOracle

__all__ = ["MERSENNE_P", "OLH", "olh_g"]

#: The prime modulus of the hash family (2**31 - 1).
MERSENNE_P = (1 << 31) - 1


def olh_g(epsilon: float) -> int:
    """The OLH hash range ``round(e^eps) + 1`` (at least 2)."""
    return max(2, round(math.exp(epsilon)) + 1)


class OLH(FrequencyOracle):
    """Optimized local hashing over ``k`` values."""

    name: ClassVar[str] = "OLH"
    #: The seed and size of :attr:`family`, the small fixed sample of hash functions over which
    #: :meth:`output_distribution` enumerates (and which :meth:`perturb` can be restricted to).
    FAMILY_SEED: ClassVar[int] = 2017
    FAMILY_SIZE: ClassVar[int] = 8

    def __init__(self, k: int, epsilon: float) -> None:
        super().__init__(k, epsilon)
        if self.k > MERSENNE_P:
            raise ValueError(f"OLH supports k <= {MERSENNE_P}")
        e = math.exp(self.epsilon)
        self.g = olh_g(self.epsilon)
        self._p = e / (e + self.g - 1)
        self._q = 1.0 / self.g
        rng = np.random.default_rng(self.FAMILY_SEED)
        self.family = np.stack(
            [rng.integers(1, MERSENNE_P, self.FAMILY_SIZE), rng.integers(0, MERSENNE_P, self.FAMILY_SIZE)],
            axis=1,
        ).astype(np.int64)

    @property
    def p(self) -> float:
        return self._p

    @property
    def q(self) -> float:
        return self._q

    def params(self) -> dict[str, float | int]:
        out = super().params()
        out["g"] = self.g
        return out

    def hash(self, a: np.ndarray | int, b: np.ndarray | int, v: np.ndarray | int) -> np.ndarray:
        """``((a v + b) mod P) mod g`` (int64; ``a v < 2^62`` cannot overflow)."""
        a64 = np.asarray(a, dtype=np.int64)
        b64 = np.asarray(b, dtype=np.int64)
        v64 = np.asarray(v, dtype=np.int64)
        return ((a64 * v64 + b64) % MERSENNE_P) % self.g

    # -- client side ------------------------------------------------------------------------------
    def perturb_arrays(
        self, values: np.ndarray, rng: np.random.Generator, *, family: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reports as three int64 arrays ``(a, b, y)``. With ``family`` (rows ``(a, b)``), each
        report's hash is drawn uniformly from those rows instead of the whole family (tests)."""
        v = self._check_values(values)
        n = v.shape[0]
        a: np.ndarray
        b: np.ndarray
        if family is None:
            a = np.asarray(rng.integers(1, MERSENNE_P, size=n, dtype=np.int64))
            b = np.asarray(rng.integers(0, MERSENNE_P, size=n, dtype=np.int64))
        else:
            fam = np.asarray(family, dtype=np.int64).reshape(-1, 2)
            pick = rng.integers(0, fam.shape[0], size=n)
            a = fam[pick][:, 0]
            b = fam[pick][:, 1]
        y = grr_perturb(self.hash(a, b, v), self.g, self._p, rng)
        return a, b, y

    def perturb(
        self, values: np.ndarray, rng: np.random.Generator, *, family: np.ndarray | None = None
    ) -> list[Any]:
        a, b, y = self.perturb_arrays(values, rng, family=family)
        out: list[Any] = np.stack([a, b, y], axis=1).tolist()
        return out

    # -- aggregator side -------------------------------------------------------------------------
    def support_arrays(self, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Support counts of reports given as arrays (vectorized over reports, one pass per value).

        ``x_v = (a v + b) mod P`` is advanced incrementally in uint32 (``x + a < 2P < 2^32``, and
        ``min(x + a, x + a - P)`` wraps to the right residue), then compared with ``y`` mod ``g``."""
        n = a.shape[0]
        out = np.zeros(self.k, dtype=np.int64)
        if n == 0:
            return out
        a32 = a.astype(np.uint32)
        x = b.astype(np.uint32)  # x_0 = b mod P = b
        y32 = y.astype(np.uint32)
        pu, gu = np.uint32(MERSENNE_P), np.uint32(self.g)
        tmp = np.empty(n, dtype=np.uint32)
        hit = np.empty(n, dtype=bool)
        for v in range(self.k):
            if v:
                np.add(x, a32, out=x)
                np.subtract(x, pu, out=tmp)
                np.minimum(x, tmp, out=x)
            np.remainder(x, gu, out=tmp)
            np.equal(tmp, y32, out=hit)
            out[v] = np.count_nonzero(hit)
        return out

    def support(self, reports: Sequence[Any]) -> np.ndarray:
        if len(reports) == 0:
            return np.zeros(self.k, dtype=np.int64)
        arr = self._int_reports(reports, "OLH")
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError("OLH reports must be [a, b, y] integer triples")
        a, b, y = arr[:, 0], arr[:, 1], arr[:, 2]
        if (
            int(a.min()) < 1 or int(a.max()) >= MERSENNE_P
            or int(b.min()) < 0 or int(b.max()) >= MERSENNE_P
            or int(y.min()) < 0 or int(y.max()) >= self.g
        ):
            raise ValueError(f"OLH report out of range (a in [1, P), b in [0, P), y in [0, {self.g}))")
        return self.support_arrays(a, b, y)

    def sample_support(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The real path: :meth:`perturb_arrays` then :meth:`support_arrays` (no shortcut: the
        collision behaviour of the real hash family is part of what is measured)."""
        c = np.asarray(counts, dtype=np.int64)
        values = np.repeat(np.arange(self.k, dtype=np.int64), c)
        return self.support_arrays(*self.perturb_arrays(values, rng))

    # -- exact distribution ------------------------------------------------------------------------
    def conditional_distribution(self, value: int, a: int, b: int) -> dict[int, float]:
        """Exact distribution of ``y`` for input ``value`` given the hash ``(a, b)``: GRR over g."""
        if not 0 <= value < self.k:
            raise ValueError(f"value must be in [0, {self.k})")
        h = int(self.hash(a, b, value))
        other = (1.0 - self._p) / (self.g - 1)
        return {y: (self._p if y == h else other) for y in range(self.g)}

    def output_distribution(self, value: int) -> dict[Hashable, float]:
        """Exact distribution of the report ``(a, b, y)`` when the hash is drawn uniformly from
        :attr:`family` (``perturb(..., family=oracle.family)`` samples exactly this)."""
        w = 1.0 / self.family.shape[0]
        out: dict[Hashable, float] = {}
        for a, b in self.family.tolist():
            for y, pr in self.conditional_distribution(value, a, b).items():
                key = (a, b, y)
                out[key] = out.get(key, 0.0) + w * pr
        return out
