"""Two-round mechanisms: exact epsilons from the exact output laws, marginals, correlation of shared memos."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from stream.ldp.csprng import ChaChaRandom
from stream.ldp.longitudinal import LongitudinalDuchi, LongitudinalGRR, LongitudinalOUE


def _grr_laws(m: LongitudinalGRR) -> tuple[np.ndarray, np.ndarray]:
    """(permanent law, composite law): rows = true value, columns = output."""
    k = m.k
    prr = np.full((k, k), m.q1) + np.eye(k) * (m.p1 - m.q1)
    irr = np.full((k, k), m.q2) + np.eye(k) * (m.p2 - m.q2)
    return prr, prr @ irr


@pytest.mark.parametrize(("k", "eps_inf", "eps_1"), [(2, 1.0, 0.5), (5, 1.0, 0.5), (7, 2.0, 1.0), (34, 4.0, 0.3)])
def test_l_grr_epsilons_are_exact(k: int, eps_inf: float, eps_1: float) -> None:
    m = LongitudinalGRR(k, eps_inf, eps_1)
    prr, comp = _grr_laws(m)
    assert np.log(prr.max(axis=0) / prr.min(axis=0)).max() == pytest.approx(eps_inf)  # the memo
    assert np.log(comp.max(axis=0) / comp.min(axis=0)).max() == pytest.approx(eps_1)  # one report
    assert np.allclose(comp.sum(axis=1), 1.0) and 0 < m.q2 < m.p2 <= 1
    # one report is marginally GRR(k, eps_1): the learner and the aggregator debias it as such
    assert comp[0, 0] == pytest.approx(m.marginal.p) and comp[0, 1] == pytest.approx(m.marginal.q)


@pytest.mark.parametrize(("k", "eps_inf", "eps_1"), [(4, 1.0, 0.5), (7, 2.0, 0.4)])
def test_l_osue_epsilons_are_exact(k: int, eps_inf: float, eps_1: float) -> None:
    """Enumerate every bit vector: the memo's law is eps_inf-LDP, one report's eps_1-LDP."""
    m = LongitudinalOUE(k, eps_inf, eps_1)

    def law(v: int, one: float, other: float) -> dict[tuple[int, ...], float]:
        out = {}
        for bits in itertools.product((0, 1), repeat=k):
            pr = 1.0
            for i, b in enumerate(bits):
                pi = one if i == v else other
                pr *= pi if b else 1.0 - pi
            out[bits] = pr
        return out

    p, q = m.composite()
    for one, other, eps in ((0.5, m.q1, eps_inf), (p, q, eps_1)):
        laws = [law(v, one, other) for v in range(k)]
        worst = max(math.log(max(lw[b] for lw in laws) / min(lw[b] for lw in laws)) for b in laws[0])
        assert worst == pytest.approx(eps)
    assert p == pytest.approx(0.5) and q == pytest.approx(m.marginal.q)
    # the sampler matches: bit frequencies of reports of value 1
    rng = ChaChaRandom(3)
    reps = m.instantaneous(m.permanent(np.full(100_000, 1), rng), rng)
    freq = ((reps[:, None] >> np.arange(k)) & 1).mean(axis=0)
    assert abs(freq[1] - p) < 0.006 and np.all(np.abs(np.delete(freq, 1) - q) < 0.006)


def test_l_duchi_is_duchi_at_eps_1_per_report_and_eps_inf_per_memo() -> None:
    m = LongitudinalDuchi(1.0, 0.5, 0.0, 500.0)
    # P[memo bit = 1 | t] in [1/2 - s1, 1/2 + s1]: ratio at t = +-1 is e^eps_inf
    hi, lo = 0.5 + m.s1, 0.5 - m.s1
    assert math.log(hi / lo) == pytest.approx(1.0)
    comp_hi = m.p2 * hi + (1 - m.p2) * lo
    assert math.log(comp_hi / (1 - comp_hi)) == pytest.approx(0.5)
    assert comp_hi == pytest.approx(float(m.marginal.prob_plus(1.0)))
    rng = ChaChaRandom(5)
    x = np.full(200_000, 100.0)
    reps = m.to_report(m.instantaneous(m.permanent(x, rng), rng))
    assert set(np.unique(reps).tolist()) == {m.low_report, m.high_report}  # two values: nothing to fingerprint
    assert abs(reps.mean() - 100.0) < 5 * math.sqrt(float(m.marginal.variance(100.0)) / x.size)


@pytest.mark.parametrize("mech", [LongitudinalGRR(5, 1.0, 0.5), LongitudinalOUE(6, 1.0, 0.5)])
def test_between_variance_is_the_covariance_of_two_reports_of_one_memo(mech: LongitudinalGRR | LongitudinalOUE) -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    memos = mech.permanent(np.zeros(n, dtype=np.int64), rng)
    a, b = mech.instantaneous(memos, rng), mech.instantaneous(memos, rng)
    if isinstance(mech, LongitudinalGRR):
        sa, sb, so = a == 0, b == 0, None
    else:
        sa, sb = (a & 1) == 1, (b & 1) == 1
        so = (a >> 1) & 1, (b >> 1) & 1
    bv, bo = mech.between_variance()
    cov = np.cov(sa.astype(float), sb.astype(float))[0, 1]
    assert abs(cov - bv) < 0.004 and bv > 0.01
    if so is not None:  # a value the person does not hold
        assert abs(np.cov(so[0].astype(float), so[1].astype(float))[0, 1] - bo) < 0.004


def test_the_per_report_epsilon_must_be_below_the_longitudinal_one() -> None:
    with pytest.raises(ValueError, match="below"):
        LongitudinalGRR(5, 1.0, 1.0)
    with pytest.raises(ValueError):
        LongitudinalOUE(80, 2.0, 1.0)  # masks are JSON integers: k <= 62


def test_alpha_point_rounding_is_unbiased() -> None:
    m = LongitudinalDuchi(1.0, 0.5, 0.0, 5000.0)
    rng = np.random.default_rng(2)
    x = np.full(400_000, 123.4)
    rounded = m.grid_value(m.round_alpha(x, rng.random(x.size)))
    assert set(np.unique(rounded).tolist()) == {0.0, m.cell}
    assert abs(rounded.mean() - 123.4) < 0.5
