"""``streamgate bench ldp``'s accuracy tables at a tiny size: structure and sane figures (the real
figures come from the command)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.bench.ldp import (
    AccuracyRow,
    accuracy_table,
    auto_trials,
    format_table,
    numeric_table,
    zipf_counts,
)
from stream.ldp import OUE


def test_accuracy_table_small() -> None:
    said: list[str] = []
    rows = accuracy_table(n=2000, epsilons=(1.0, 4.0), ks=(4, 30), trials=20, seed=1, say=said.append)
    assert len(rows) == 3 * 2 * 2 == len(said)
    assert {r.mechanism for r in rows} == {"GRR", "OUE", "OLH"}
    for r in rows:
        assert isinstance(r, AccuracyRow)
        assert r.n == 2000 and r.trials == 20 and r.k in (4, 30) and r.epsilon in (1.0, 4.0)
        assert math.isfinite(r.ratio) and r.ratio > 0
        assert r.empirical_var > 0 and r.theoretical_var > 0
        assert r.ratio == pytest.approx(r.empirical_var / r.theoretical_var)
        assert 0.3 < r.ratio < 3.0  # 20 trials: loose, but a wrong closed form by 3x shows
        assert r.path in ("perturb", "exact-sampler")
    text = format_table(rows)
    assert text.count("\n") == len(rows) + 2
    assert "OLH" in text and "cells with ratio in [0.9, 1.1]" in text


def test_numeric_table_small() -> None:
    rows = numeric_table(n=500, epsilons=(0.5, 2.0), trials=30, seed=2, say=lambda s: None)
    assert [r.mechanism for r in rows] == ["PM", "PM", "HM", "HM", "Duchi", "Duchi"]
    for r in rows:
        assert r.k == 0 and r.n == 500 and r.trials == 30
        assert math.isfinite(r.ratio) and 0.3 < r.ratio < 3.0
    assert " - " in format_table(rows)


def test_bench_helpers() -> None:
    c = zipf_counts(1000, 7)
    assert c.sum() == 1000 and np.all(np.diff(c) <= 0) and c[-1] > 0
    assert auto_trials(4) == 1000 and auto_trials(250) == 200
    # large n*k: the OUE cell uses the exact sampler, and says so
    (row,) = accuracy_table(n=20_000, epsilons=(1.0,), ks=(200,), trials=5, mechanisms=("OUE",),
                            say=lambda s: None)
    assert row.path == "exact-sampler" and OUE(200, 1.0).k == row.k
    with pytest.raises(ValueError):
        accuracy_table(n=0)
    with pytest.raises(ValueError):
        numeric_table(trials=1)


def test_longitudinal_table_small() -> None:
    from stream.bench.ldp import format_longitudinal, longitudinal_table

    rows = longitudinal_table(n=4000, eps_infs=(2.0,), ks=(4, 20), ms=(1, 4), trials=40, seed=3, say=lambda s: None)
    assert [(r.mechanism, r.m) for r in rows] == [("L-GRR", 1), ("L-GRR", 4), ("L-GRR", 1), ("L-GRR", 4),
                                                  ("L-OSUE", 1), ("L-OSUE", 4), ("L-OSUE", 1), ("L-OSUE", 4),
                                                  ("L-Duchi", 1)]
    for r in rows:
        assert r.eps_inf == 2.0 and r.epsilon == 1.0 and r.n == 4000
        assert 0.5 < r.ratio < 2.0  # 40 trials: loose; the command's trial counts give the real figures
    text = format_longitudinal(rows)
    assert "L-OSUE" in text and "cells with ratio in [0.9, 1.1]" in text
