"""Exact epsilon of every mechanism, and the exact distributions agree with the real samplers.

For each mechanism the exact output law of every input is enumerated (or its
density evaluated on a fine grid); the likelihood ratio of any output between
any two inputs must be <= e^eps, and must reach e^eps (a mechanism that is
needlessly noisy is a bug too). The sampler (``perturb``) is then checked
against the same exact law with 200k seeded draws, so the exact check is about
the code that really runs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from stream.ldp import (
    GRR,
    HM_EPS_STAR,
    MERSENNE_P,
    OLH,
    OUE,
    DuchiMechanism,
    FrequencyOracle,
    HybridMechanism,
    PiecewiseMechanism,
)

EPSILONS = (0.5, 1.0, 2.0, 4.0)
KS = (2, 3, 4, 5, 6)
REL = 1e-9
DRAWS = 200_000


def _matrix(dists: list[dict]) -> np.ndarray:
    keys = sorted({key for d in dists for key in d}, key=repr)
    return np.array([[d.get(key, 0.0) for key in keys] for d in dists])


def _max_ratio(m: np.ndarray, eps: float) -> float:
    """Assert the pairwise bound on a (inputs x outputs) probability matrix; return the max ratio."""
    bound = math.exp(eps) * (1.0 + REL)
    for i, j in itertools.permutations(range(m.shape[0]), 2):
        assert np.all(m[i] <= bound * m[j]), f"ratio above e^eps between inputs {i} and {j}"
    cols = m[:, m.min(axis=0) > 0]
    return float((cols.max(axis=0) / cols.min(axis=0)).max())


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("cls", [GRR, OUE])
def test_exact_epsilon_grr_oue(cls: type[FrequencyOracle], k: int, eps: float) -> None:
    o = cls(k, eps)
    dists = [o.output_distribution(v) for v in range(k)]
    for d in dists:
        assert math.isclose(sum(d.values()), 1.0, rel_tol=1e-12)
        assert all(pr > 0 for pr in d.values())
    if cls is OUE:
        assert len(dists[0]) == 2**k
    ratio = _max_ratio(_matrix(dists), eps)
    assert ratio == pytest.approx(math.exp(eps), rel=1e-9)


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("k", KS)
def test_exact_epsilon_olh(k: int, eps: float) -> None:
    o = OLH(k, eps)
    assert o.family.shape == (OLH.FAMILY_SIZE, 2)
    tight = 0.0
    for a, b in o.family.tolist():
        # the hash is public and independent of the value: condition on it
        dists = [o.conditional_distribution(v, a, b) for v in range(k)]
        for d in dists:
            assert set(d) == set(range(o.g))
            assert math.isclose(sum(d.values()), 1.0, rel_tol=1e-12)
        tight = max(tight, _max_ratio(_matrix(dists), eps))
    assert tight == pytest.approx(math.exp(eps), rel=1e-9)
    # the joint law over (a, b, y) with (a, b) uniform on the family satisfies the same bound
    joint = [o.output_distribution(v) for v in range(k)]
    assert all(math.isclose(sum(d.values()), 1.0, rel_tol=1e-12) for d in joint)
    assert _max_ratio(_matrix(joint), eps) == pytest.approx(math.exp(eps), rel=1e-9)


def test_olh_parameters_follow_the_paper() -> None:
    for eps in EPSILONS:
        o = OLH(10, eps)
        assert o.g == max(2, round(math.exp(eps)) + 1)
        assert o.p == pytest.approx(math.exp(eps) / (math.exp(eps) + o.g - 1))
        assert o.q == pytest.approx(1.0 / o.g)
        assert o.params()["g"] == o.g
    assert OLH(10, 0.05).g == 2


def _pm_bin_probs(m: PiecewiseMechanism, t: float, edges: np.ndarray) -> np.ndarray:
    """Exact probability of each bin under PM's piecewise-constant density."""
    lt, rt = (float(x) for x in m.interval(t))
    segs = [(-m.C, lt, m.p_low), (lt, rt, m.p_high), (rt, m.C, m.p_low)]
    lo, hi = edges[:-1], edges[1:]
    out = np.zeros(lo.size)
    for s0, s1, dens in segs:
        out += dens * np.clip(np.minimum(hi, s1) - np.maximum(lo, s0), 0.0, None)
    return out


T_GRID = np.linspace(-1.0, 1.0, 41)


@pytest.mark.parametrize("eps", EPSILONS)
def test_exact_epsilon_pm(eps: float) -> None:
    m = PiecewiseMechanism(eps, 0.0, 1.0)
    out = np.linspace(-m.C - 0.2, m.C + 0.2, 4001)
    dens = np.stack([m.density(float(t), out) for t in T_GRID])
    for t in (-1.0, -0.2, 0.5, 1.0):  # a probability density on [-C, C]
        assert _pm_bin_probs(m, t, np.array([-m.C, m.C]))[0] == pytest.approx(1.0, rel=1e-12)
        lt, rt = m.interval(t)
        assert -m.C <= lt <= rt <= m.C
    assert _max_ratio(dens, eps) == pytest.approx(math.exp(eps), rel=1e-9)
    assert np.all(dens[:, np.abs(out) > m.C] == 0.0)


@pytest.mark.parametrize("eps", EPSILONS)
def test_exact_epsilon_duchi(eps: float) -> None:
    m = DuchiMechanism(eps, 0.0, 1.0)
    dists = [m.output_distribution(float(t)) for t in T_GRID]
    for d in dists:
        assert set(d) == {m.B, -m.B}
        assert math.isclose(sum(d.values()), 1.0)
    assert _max_ratio(_matrix(dists), eps) == pytest.approx(math.exp(eps), rel=1e-9)


@pytest.mark.parametrize("eps", (*EPSILONS, 0.3))
def test_exact_epsilon_hm(eps: float) -> None:
    m = HybridMechanism(eps, 0.0, 1.0)
    assert m.alpha == (pytest.approx(1.0 - math.exp(-eps / 2.0)) if eps > HM_EPS_STAR else 0.0)
    atoms = [m.output_distribution(float(t)) for t in T_GRID]
    ratio = _max_ratio(_matrix(atoms), eps)
    if m.alpha > 0:
        out = np.linspace(-m.pm.C - 0.2, m.pm.C + 0.2, 4001)
        dens = np.stack([m.density(float(t), out) for t in T_GRID])
        ratio = max(ratio, _max_ratio(dens, eps))
        # total mass: the continuous part alpha plus the atoms 1 - alpha
        assert sum(atoms[0].values()) == pytest.approx(1.0 - m.alpha)
    else:
        assert np.all(m.density(0.0, np.linspace(-3, 3, 11)) == 0.0)
        assert sum(atoms[0].values()) == pytest.approx(1.0)
    assert ratio == pytest.approx(math.exp(eps), rel=1e-9)


def test_hm_eps_star() -> None:
    assert math.isclose(HM_EPS_STAR, 0.6094, abs_tol=1e-4)


# -- the exact laws describe the real samplers --------------------------------------------------------


def _assert_matches(counts: dict, probs: dict, n: int) -> None:
    """Every outcome within 5 standard errors, no unexpected outcome, and a chi-square sanity bound."""
    assert set(counts) <= set(probs), f"unexpected outcomes {set(counts) - set(probs)}"
    chi2 = 0.0
    for key, pr in probs.items():
        c = counts.get(key, 0)
        se = math.sqrt(n * pr * (1 - pr))
        assert abs(c - n * pr) <= 5 * se + 1e-9, f"outcome {key}: {c} vs expected {n * pr:.1f}"
        chi2 += (c - n * pr) ** 2 / (n * pr)
    df = len(probs) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df)


def _counts(items: list) -> dict:
    out: dict = {}
    for it in items:
        key = tuple(it) if isinstance(it, list) else it
        out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.parametrize(("cls", "k", "eps", "value"), [(GRR, 5, 1.0, 2), (GRR, 3, 4.0, 0), (OUE, 4, 1.0, 1),
                                                        (OUE, 5, 0.5, 4)])
def test_sampler_matches_exact_law(cls: type[FrequencyOracle], k: int, eps: float, value: int) -> None:
    o = cls(k, eps)
    rng = np.random.default_rng(1234)
    reports = o.perturb(np.full(DRAWS, value), rng)
    assert all(type(r) is int for r in reports[:100])
    _assert_matches(_counts(reports), o.output_distribution(value), DRAWS)


@pytest.mark.parametrize(("k", "eps", "value"), [(5, 1.0, 3), (6, 2.0, 0), (3, 0.5, 1)])
def test_olh_sampler_matches_exact_law(k: int, eps: float, value: int) -> None:
    o = OLH(k, eps)
    rng = np.random.default_rng(99)
    reports = o.perturb(np.full(DRAWS, value), rng, family=o.family)
    _assert_matches(_counts(reports), o.output_distribution(value), DRAWS)


def test_olh_default_hash_draws() -> None:
    """Without a family: (a, b) uniform on the whole 2-universal family, y GRR over g given h(v)."""
    o = OLH(50, 1.0)
    rng = np.random.default_rng(5)
    value = 17
    rep = np.asarray(o.perturb(np.full(DRAWS, value), rng), dtype=np.int64)
    a, b, y = rep[:, 0], rep[:, 1], rep[:, 2]
    assert a.min() >= 1 and a.max() < MERSENNE_P and b.min() >= 0 and b.max() < MERSENNE_P
    for arr in (a, b):  # uniform on [0, P): mean P/2 with sd P/sqrt(12 N)
        assert abs(arr.mean() - MERSENNE_P / 2) < 5 * MERSENNE_P / math.sqrt(12 * DRAWS)
    h = o.hash(a, b, value)
    kept = y == h
    assert abs(kept.mean() - o.p) < 5 * math.sqrt(o.p * (1 - o.p) / DRAWS)
    shift = ((y - h) % o.g)[~kept]  # the others uniformly
    _assert_matches(_counts(shift.tolist()), {s: 1.0 / (o.g - 1) for s in range(1, o.g)}, int(shift.size))


def test_olh_hash_collisions_are_near_1_over_g() -> None:
    """The real family: P[h(u) = h(v)] for u != v is 1/g up to sampling error."""
    o = OLH(1000, 2.0)
    rng = np.random.default_rng(8)
    a = rng.integers(1, MERSENNE_P, DRAWS)
    b = rng.integers(0, MERSENNE_P, DRAWS)
    coll = (o.hash(a, b, 3) == o.hash(a, b, 999)).mean()
    assert abs(coll - 1.0 / o.g) < 5 * math.sqrt((1.0 / o.g) * (1 - 1.0 / o.g) / DRAWS)


@pytest.mark.parametrize("eps", [0.5, 2.0])
@pytest.mark.parametrize("t", [-1.0, 0.3, 1.0])
def test_pm_sampler_matches_density(t: float, eps: float) -> None:
    m = PiecewiseMechanism(eps, 0.0, 1.0)
    rng = np.random.default_rng(7)
    out = m.perturb_unit(np.full(DRAWS, t), rng)
    assert out.min() >= -m.C and out.max() <= m.C
    edges = np.linspace(-m.C, m.C, 41)
    probs = _pm_bin_probs(m, t, edges)
    hist = np.histogram(out, bins=edges)[0]
    _assert_matches({i: int(c) for i, c in enumerate(hist) if c}, dict(enumerate(probs)), DRAWS)


@pytest.mark.parametrize("t", [-0.8, 0.0, 1.0])
def test_duchi_sampler_matches_law(t: float) -> None:
    m = DuchiMechanism(1.0, 0.0, 1.0)
    out = m.perturb_unit(np.full(DRAWS, t), np.random.default_rng(3))
    _assert_matches(_counts(out.tolist()), m.output_distribution(t), DRAWS)


@pytest.mark.parametrize("eps", [0.4, 2.0])
def test_hm_sampler_matches_law(eps: float) -> None:
    m = HybridMechanism(eps, 0.0, 1.0)
    t = 0.6
    out = m.perturb_unit(np.full(DRAWS, t), np.random.default_rng(11))
    atoms = m.output_distribution(t)
    is_atom = np.isin(out, list(atoms))
    counts = _counts(out[is_atom].tolist())
    probs = dict(atoms)
    if m.alpha > 0:
        edges = np.linspace(-m.pm.C, m.pm.C, 31)
        cont = m.alpha * _pm_bin_probs(m.pm, t, edges)
        hist = np.histogram(out[~is_atom], bins=edges)[0]
        counts.update({("bin", i): int(c) for i, c in enumerate(hist) if c})
        probs.update({("bin", i): float(p) for i, p in enumerate(cont)})
    else:
        assert is_atom.all()
    _assert_matches(counts, probs, DRAWS)


def test_perturb_in_original_units_is_the_scaled_sampler() -> None:
    for cls in (PiecewiseMechanism, DuchiMechanism, HybridMechanism):
        m = cls(1.5, 10.0, 60.0)
        x = np.array([-5.0, 10.0, 22.5, 60.0, 1e9])
        got = m.perturb(x, np.random.default_rng(0))
        t = m.to_unit(x)
        assert t.tolist() == [-1.0, -1.0, -0.5, 1.0, 1.0]  # clamped then scaled
        want = 10.0 + (m.perturb_unit(t, np.random.default_rng(0)) + 1.0) * 25.0
        np.testing.assert_allclose(got, want)
