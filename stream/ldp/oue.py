"""Optimized unary encoding (OUE).

Wang, Blocki, Li, Jha, USENIX Security 2017, section 4.2: the value is one-hot
encoded in ``k`` bits; the true value's bit is reported as 1 with probability
``p = 1/2`` and every other bit (independently) as 1 with probability
``q = 1 / (e^eps + 1)``. The encodings of two inputs differ in two bits, so the
likelihood ratio of any report is at most ``p(1-q) / ((1-p) q) = e^eps``
(attained), the optimal (p, q) for that constraint.

Report: the perturbed bits as an ``int`` bitmask (bit ``i`` = value ``i``) for
``k <= 62``, else as a lowercase hex string of the same bitmask (no prefix).
:meth:`OUE.support` accepts both forms.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

from stream.ldp.oracle import FrequencyOracle

__all__ = ["INT_MASK_MAX_K", "OUE"]

#: Largest k whose reports are plain JSON integers (they stay below 2**62, exact in int64).
INT_MASK_MAX_K = 62

_CHUNK_CELLS = 1 << 22  # bits perturbed per numpy batch (bounds memory for large k)


class OUE(FrequencyOracle):
    """Optimized unary encoding over ``k`` values."""

    name: ClassVar[str] = "OUE"

    def __init__(self, k: int, epsilon: float) -> None:
        super().__init__(k, epsilon)
        self._q = 1.0 / (math.exp(self.epsilon) + 1.0)
        self._nbytes = (self.k + 7) // 8

    @property
    def p(self) -> float:
        return 0.5

    @property
    def q(self) -> float:
        return self._q

    def perturb_bits(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The perturbed unary encodings as a bool array of shape ``(n, k)`` (the sampler of
        :meth:`perturb`)."""
        v = self._check_values(values)
        n = v.shape[0]
        bits = np.empty((n, self.k), dtype=bool)
        step = max(1, _CHUNK_CELLS // self.k)
        for s in range(0, n, step):
            e = min(n, s + step)
            block = rng.random((e - s, self.k)) < self._q
            block[np.arange(e - s), v[s:e]] = rng.random(e - s) < 0.5
            bits[s:e] = block
        return bits

    def perturb(self, values: np.ndarray, rng: np.random.Generator) -> list[Any]:
        bits = self.perturb_bits(values, rng)
        packed = np.packbits(bits, axis=1, bitorder="little")
        if self.k <= INT_MASK_MAX_K:
            padded = np.zeros((packed.shape[0], 8), dtype=np.uint8)
            padded[:, : packed.shape[1]] = packed
            ints: list[Any] = padded.view("<u8").reshape(-1).astype(np.int64).tolist()
            return ints
        return [format(int.from_bytes(row.tobytes(), "little"), "x") for row in packed]

    def _mask_bytes(self, reports: Sequence[Any]) -> np.ndarray:
        """Reports -> uint8 array ``(n, nbytes)`` of little-endian bitmasks (validated)."""
        n = len(reports)
        out = np.zeros((n, self._nbytes), dtype=np.uint8)
        if n == 0:
            return out
        if self.k <= INT_MASK_MAX_K and all(type(r) is int for r in reports):
            arr = np.asarray(reports, dtype=np.int64)
            if int(arr.min()) < 0 or int((arr >> self.k).max()) != 0:
                raise ValueError(f"OUE reports must be bitmasks of {self.k} bits")
            out[:] = arr.astype("<u8").view(np.uint8).reshape(n, 8)[:, : self._nbytes]
            return out
        limit = 1 << self.k
        for i, r in enumerate(reports):
            if isinstance(r, str):
                try:
                    x = int(r, 16)
                except ValueError:
                    raise ValueError("OUE report strings must be hex") from None
            elif isinstance(r, int | np.integer) and not isinstance(r, bool):
                x = int(r)
            else:
                raise ValueError(f"OUE report must be an int or a hex string, got {type(r).__name__}")
            if x < 0 or x >= limit:
                raise ValueError(f"OUE reports must be bitmasks of {self.k} bits")
            out[i] = np.frombuffer(x.to_bytes(self._nbytes, "little"), dtype=np.uint8)
        return out

    def support(self, reports: Sequence[Any]) -> np.ndarray:
        masks = self._mask_bytes(reports)
        bits = np.unpackbits(masks, axis=1, count=self.k, bitorder="little")
        return bits.sum(axis=0, dtype=np.int64)

    def output_distribution(self, value: int) -> dict[Hashable, float]:
        if not 0 <= value < self.k:
            raise ValueError(f"value must be in [0, {self.k})")
        if self.k > 20:
            raise ValueError("output_distribution enumerates 2^k reports: only for k <= 20")
        q = self._q
        out: dict[Hashable, float] = {}
        for mask in range(1 << self.k):
            prob = 0.5
            for i in range(self.k):
                if i == value:
                    continue
                prob *= q if (mask >> i) & 1 else 1.0 - q
            out[mask] = prob
        return out

    def sample_support(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exact: bits are independent, so support(v) = Bin(c_v, 1/2) + Bin(n - c_v, q)."""
        c = np.asarray(counts, dtype=np.int64)
        n = int(c.sum())
        return (rng.binomial(c, 0.5) + rng.binomial(n - c, self._q)).astype(np.int64)
