"""Numeric mechanisms (PM, HM, Duchi): unbiasedness and the closed-form variance (statistical,
seeded), the mean estimator and its standard error, parameters and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.ldp import (
    HM_EPS_STAR,
    DuchiMechanism,
    HybridMechanism,
    NumericMechanism,
    PiecewiseMechanism,
    make_numeric,
    mean_estimate,
    mean_std_error,
)

LO, HI = 10.0, 510.0
MECHS = (PiecewiseMechanism, HybridMechanism, DuchiMechanism)
DRAWS = 200_000


@pytest.mark.parametrize("eps", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("cls", MECHS)
def test_one_report_unbiased_with_closed_form_variance(cls: type[NumericMechanism], eps: float) -> None:
    m = cls(eps, LO, HI)
    rng = np.random.default_rng(2019)
    for x in (LO, 60.0, 260.0, 400.0, HI):
        out = m.perturb(np.full(DRAWS, x), rng)
        var = m.variance(x)
        assert isinstance(var, float)
        assert abs(out.mean() - x) < 5 * math.sqrt(var / DRAWS), (x, out.mean())
        # sample variance vs closed form; its standard error from the sample's fourth moment
        s2 = out.var(ddof=1)
        m4 = np.mean((out - out.mean()) ** 4)
        se = math.sqrt(max(m4 - s2**2, 0.0) / DRAWS)
        # (+ the O(var/N) term of estimating the mean: a symmetric two-point law has se = 0)
        assert abs(s2 - var) < 5 * se + 20 * var / DRAWS, (x, s2, var, se)
        assert se / var < 0.02  # the check has teeth


def _prices(n: int, rng: np.random.Generator) -> np.ndarray:
    """A skewed, price-like population (log-normal), some of it beyond the bounds."""
    return rng.lognormal(mean=4.0, sigma=0.9, size=n)


@pytest.mark.parametrize("cls", MECHS)
def test_mean_estimator_over_a_population(cls: type[NumericMechanism]) -> None:
    m = cls(1.0, LO, HI)
    rng = np.random.default_rng(5)
    x = _prices(1000, rng)
    truth = float(np.clip(x, LO, HI).mean())
    trials = 1000
    means = np.array([mean_estimate(m.perturb(x, rng)) for _ in range(trials)])
    var_mean = float(np.mean(m.variance(x))) / x.size
    assert abs(means.mean() - truth) < 5 * math.sqrt(var_mean / trials)
    # variance of the mean estimate: relative sd of a sample variance of near-normal draws
    assert means.var(ddof=1) == pytest.approx(var_mean, rel=5 * math.sqrt(2 / (trials - 1)))


def test_closed_forms() -> None:
    eps = 2.0
    e2 = math.exp(eps / 2)
    pm = PiecewiseMechanism(eps, -1.0, 1.0)  # the scaled domain itself
    for t in (-1.0, 0.0, 0.4):
        assert pm.variance(t) == pytest.approx(t * t / (e2 - 1) + (e2 + 3) / (3 * (e2 - 1) ** 2))
    d = DuchiMechanism(eps, -1.0, 1.0)
    b = (math.exp(eps) + 1) / (math.exp(eps) - 1)
    assert math.isclose(d.B, b)
    assert d.variance(0.5) == pytest.approx(b * b - 0.25)
    hm = HybridMechanism(eps, -1.0, 1.0)
    a = 1 - math.exp(-eps / 2)
    assert hm.variance(0.3) == pytest.approx(a * float(pm.variance(0.3)) + (1 - a) * float(d.variance(0.3)))
    # original units scale by ((hi - lo) / 2)^2
    assert PiecewiseMechanism(eps, 0.0, 200.0).variance(100.0) == pytest.approx(pm.variance(0.0) * 100.0**2)
    # below eps*, HM is Duchi
    low = HybridMechanism(HM_EPS_STAR * 0.99, 0.0, 1.0)
    assert low.alpha == 0.0
    assert low.variance(0.7) == pytest.approx(DuchiMechanism(HM_EPS_STAR * 0.99, 0.0, 1.0).variance(0.7))
    v = pm.variance(np.array([0.0, 1.0]))
    assert isinstance(v, np.ndarray) and v.shape == (2,)


@pytest.mark.parametrize("eps", [0.3, 0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("cls", MECHS)
def test_worst_case_variance(cls: type[NumericMechanism], eps: float) -> None:
    m = cls(eps, LO, HI)
    grid = np.linspace(LO, HI, 1001)
    assert m.worst_case_variance() == pytest.approx(float(np.max(m.variance(grid))), rel=1e-12)


def test_hm_beats_its_components_in_the_worst_case() -> None:
    for eps in (1.0, 2.0, 4.0):
        hm, pm, d = HybridMechanism(eps, 0, 1), PiecewiseMechanism(eps, 0, 1), DuchiMechanism(eps, 0, 1)
        assert hm.worst_case_variance() <= min(pm.worst_case_variance(), d.worst_case_variance()) + 1e-12


def test_clamping_and_scaling() -> None:
    m = PiecewiseMechanism(1.0, LO, HI)
    a = m.perturb(np.array([-1000.0, 1e12]), np.random.default_rng(1))
    b = m.perturb(np.array([LO, HI]), np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert m.variance(-5.0) == m.variance(LO)
    with pytest.raises(ValueError):
        m.perturb(np.array([math.nan]), np.random.default_rng(0))
    # outputs may lie outside [lo, hi], within the scaled [-C, C]
    out = m.perturb(np.full(10_000, LO), np.random.default_rng(2))
    assert out.min() < LO
    assert out.min() >= m.from_unit(np.array(-m.C))[()] - 1e-9


def test_params_and_factory() -> None:
    assert isinstance(make_numeric(1.0, 0, 1), HybridMechanism)
    assert isinstance(make_numeric(1.0, 0, 1, "numeric"), HybridMechanism)
    assert isinstance(make_numeric(1.0, 0, 1, "HM"), HybridMechanism)
    assert isinstance(make_numeric(1.0, 0, 1, "PM"), PiecewiseMechanism)
    assert isinstance(make_numeric(1.0, 0, 1, "Duchi"), DuchiMechanism)
    for hint in ("pm", "Laplace", ""):
        with pytest.raises(ValueError):
            make_numeric(1.0, 0, 1, hint)
    p = make_numeric(2.0, 5, 9, "PM").params()
    assert p["epsilon"] == 2.0 and p["lo"] == 5.0 and p["hi"] == 9.0 and p["mechanism"] == "PM" and "C" in p
    assert {"alpha", "B", "C"} <= set(make_numeric(2.0, 5, 9).params())
    assert "B" in make_numeric(2.0, 5, 9, "Duchi").params()
    for eps, lo, hi in ((0.0, 0, 1), (-1.0, 0, 1), (math.nan, 0, 1), (1.0, 1, 1), (1.0, 2, 1), (1.0, 0, math.inf)):
        for cls in MECHS:
            with pytest.raises(ValueError):
                cls(eps, lo, hi)


def test_mean_helpers() -> None:
    assert mean_estimate(np.array([1.0, 2.0, 6.0])) == 3.0
    with pytest.raises(ValueError):
        mean_estimate(np.array([]))
    m = PiecewiseMechanism(1.0, LO, HI)
    assert mean_std_error(m, 400, 100.0) == pytest.approx(math.sqrt(float(m.variance(100.0)) / 400))
    assert mean_std_error(m, 400) == pytest.approx(math.sqrt(m.worst_case_variance() / 400))
    assert mean_std_error(m, 400) >= mean_std_error(m, 400, 100.0)
    with pytest.raises(ValueError):
        mean_std_error(m, 0, 1.0)
