"""Post-processing of unbiased frequency estimates (free under differential privacy).

The unbiased estimates of a frequency oracle can be negative and need not sum
to 1. :func:`project_simplex` returns the closest (Euclidean) probability
vector, with the sort-based algorithm (Held, Wolfe, Crowder 1974; Duchi,
Shalev-Shwartz, Singer, Chandra, ICML 2008); Wang, Lopuhaa-Zwakenberg, et al.
("Locally differentially private frequency estimation with consistency",
NDSS 2020) compare this "Norm-Sub"-like step with others. :func:`clip_renormalize`
is the simpler clip-at-zero-and-rescale. Both are biased but lower the error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clip_renormalize", "project_simplex"]


def _vector(v: np.ndarray) -> np.ndarray:
    x = np.asarray(v, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("expected a non-empty 1-D vector")
    if not np.isfinite(x).all():
        raise ValueError("vector must be finite")
    return x


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto ``{x : x >= 0, sum(x) = 1}``."""
    x = _vector(v)
    u = np.sort(x)[::-1]
    css = np.cumsum(u)
    idx = np.arange(1, x.size + 1)
    cond = u - (css - 1.0) / idx > 0
    rho = int(np.flatnonzero(cond)[-1])  # cond[0] always holds
    theta = (css[rho] - 1.0) / (rho + 1)
    return np.maximum(x - theta, 0.0)


def clip_renormalize(v: np.ndarray) -> np.ndarray:
    """Clip at 0 and rescale to sum 1 (uniform if every entry is <= 0)."""
    x = np.maximum(_vector(v), 0.0)
    s = float(x.sum())
    if s <= 0.0:
        return np.full(x.size, 1.0 / x.size)
    return x / s
