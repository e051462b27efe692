"""Choosing a frequency oracle: :func:`choose_oracle`, :func:`make_oracle`.

Apart from :mod:`stream.ldp.oracle` (the base class the oracles import), so no module imports one
that imports it back.
"""

from __future__ import annotations

import math

import numpy as np

from stream.ldp.grr import GRR
from stream.ldp.olh import OLH
from stream.ldp.oracle import FrequencyOracle, check_epsilon
from stream.ldp.oue import OUE

__all__ = ["choose_oracle", "make_oracle"]


def choose_oracle(k: int, epsilon: float, hint: str | None = None) -> type[FrequencyOracle]:
    """The oracle class for a domain of ``k`` values at ``epsilon``.

    ``hint`` forces one ("GRR", "OUE", "OLH"); by default GRR iff ``k < 3 e^eps + 2`` (where its
    variance is the smaller, Wang et al. 2017 section 4.4), else OLH.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ValueError(f"domain size k must be an integer >= 2, got {k!r}")
    eps = check_epsilon(epsilon)
    table: dict[str, type[FrequencyOracle]] = {"GRR": GRR, "OUE": OUE, "OLH": OLH}
    if hint is not None:
        try:
            return table[hint]
        except (KeyError, TypeError):
            raise ValueError(f"unknown frequency oracle {hint!r} (expected one of {sorted(table)})") from None
    return GRR if k < 3.0 * math.exp(eps) + 2.0 else OLH


def make_oracle(k: int, epsilon: float, hint: str | None = None) -> FrequencyOracle:
    """An instance of :func:`choose_oracle`'s choice."""
    return choose_oracle(k, epsilon, hint)(int(k), epsilon)
