"""Frequency estimators: unbiasedness and the closed-form variance (statistical, seeded), report
formats, oracle choice, parameter errors, and post-processing."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.ldp import (
    GRR,
    MERSENNE_P,
    OLH,
    OUE,
    FrequencyOracle,
    choose_oracle,
    clip_renormalize,
    make_oracle,
    project_simplex,
    secure_rng,
)

# a known non-uniform distribution over k = 8 values (Zipf-like, one value absent)
TRUE_F = np.array([0.35, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.0])


def _population(n: int) -> np.ndarray:
    counts = np.round(TRUE_F * n).astype(np.int64)
    counts[0] += n - counts.sum()
    return counts


def _trials(o: FrequencyOracle, counts: np.ndarray, trials: int, seed: int, path: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(counts.sum())
    values = np.repeat(np.arange(o.k), counts)
    out = np.empty((trials, o.k))
    for t in range(trials):
        # "perturb": the production path (JSON-ready reports, then support); else the exact sampler
        sup = o.support(o.perturb(values, rng)) if path == "perturb" else o.sample_support(counts, rng)
        out[t] = o.estimate(sup, n)
    return out


CASES = [
    (GRR, 1.0, "perturb"), (OUE, 1.0, "perturb"), (OLH, 1.0, "perturb"), (OLH, 3.0, "perturb"),
    (GRR, 2.0, "sampler"), (OUE, 0.5, "sampler"),
]


@pytest.mark.parametrize(("cls", "eps", "path"), CASES)
def test_unbiased_and_variance_matches_closed_form(cls: type[FrequencyOracle], eps: float, path: str) -> None:
    n, trials = 2000, 1500
    o = cls(8, eps)
    counts = _population(n)
    f = counts / n
    est = _trials(o, counts, trials, seed=42, path=path)
    var = np.asarray(o.variance(n, f))
    # unbiased: every value's mean estimate within 5 standard errors of the truth
    se = np.sqrt(var / trials)
    assert np.all(np.abs(est.mean(axis=0) - f) < 5 * se), (est.mean(axis=0), f)
    # variance: the pooled empirical variance vs the mean closed form; the tolerance is 5 standard
    # errors of the pooled statistic itself, measured across trials (so correlations count)
    dev2 = (est - est.mean(axis=0)) ** 2 * trials / (trials - 1)
    per_trial = dev2.mean(axis=1)
    pooled, pooled_se = per_trial.mean(), per_trial.std(ddof=1) / math.sqrt(trials)
    assert abs(pooled - var.mean()) < 5 * pooled_se, (pooled, var.mean(), pooled_se)
    assert pooled_se / var.mean() < 0.03  # the check has teeth: 5 SE < 15 %
    # and per value, loosely (5 sd of a sample variance of `trials` near-normal draws)
    np.testing.assert_allclose(est.var(axis=0, ddof=1), var, rtol=5 * math.sqrt(2 / (trials - 1)))


def test_variance_formula_shapes() -> None:
    o = GRR(5, 1.0)
    p, q, n = o.p, o.q, 100
    assert o.variance(n) == pytest.approx(q * (1 - q) / (n * (p - q) ** 2))
    assert o.variance(n, [0.0, 0.5]).tolist() == o.variance(n, np.array([0.0, 0.5])).tolist()  # type: ignore[union-attr]
    assert isinstance(o.variance(n, np.float64(0.2)), float)
    v = o.variance(n, np.array([0.0, 0.5]))
    assert isinstance(v, np.ndarray) and v.shape == (2,)
    assert v[1] == pytest.approx(q * (1 - q) / (n * (p - q) ** 2) + 0.5 * (1 - p - q) / (n * (p - q)))
    # OUE: the classic 4 e^eps / (n (e^eps - 1)^2) at f = 0
    assert OUE(9, 2.0).variance(n) == pytest.approx(4 * math.exp(2) / (n * (math.exp(2) - 1) ** 2))
    with pytest.raises(ValueError):
        o.variance(0)


def test_estimate_checks() -> None:
    o = GRR(3, 1.0)
    with pytest.raises(ValueError):
        o.estimate(np.array([1, 2, 3]), 0)
    with pytest.raises(ValueError):
        o.estimate(np.array([1, 2]), 10)
    est = o.estimate(np.array([10, 0, 0]), 10)
    assert est[0] > 1 and est[1] < 0  # raw unbiased estimates are not clipped


# -- reports --------------------------------------------------------------------------------------------


def test_grr_reports() -> None:
    o = GRR(4, 1.0)
    reps = o.perturb(np.array([0, 1, 2, 3, 3]), np.random.default_rng(0))
    assert all(type(r) is int and 0 <= r < 4 for r in reps)
    json.dumps(reps)
    assert o.support([0, 3, 3]).tolist() == [1, 0, 0, 2]
    assert o.support([]).tolist() == [0, 0, 0, 0]
    assert o.support([3]).dtype == np.int64
    for bad in ([4], [-1], [1.0], ["1"], [True], [[1, 2]], [2**70]):
        with pytest.raises(ValueError):
            o.support(bad)
    with pytest.raises(ValueError):
        o.perturb(np.array([4]), np.random.default_rng(0))
    with pytest.raises(ValueError):
        o.perturb(np.array([-1]), np.random.default_rng(0))
    with pytest.raises(ValueError):
        o.perturb(np.array([0.5]), np.random.default_rng(0))


@pytest.mark.parametrize("k", [2, 8, 62, 63, 200])
def test_oue_report_format_and_support(k: int) -> None:
    o = OUE(k, 1.0)
    rng = np.random.default_rng(k)
    values = rng.integers(0, k, 500)
    bits = o.perturb_bits(values, np.random.default_rng(1))
    reps = o.perturb(values, np.random.default_rng(1))  # same seed: the same bits, encoded
    json.dumps(reps)
    if k <= 62:
        assert all(type(r) is int and 0 <= r < 2**k for r in reps)
    else:
        assert all(isinstance(r, str) and r == r.lower() and not r.startswith("0x") for r in reps)
    decoded = [int(r, 16) if isinstance(r, str) else r for r in reps]
    for row, x in zip(bits[:50], decoded[:50], strict=True):
        assert x == sum(1 << i for i in range(k) if row[i])
    assert o.support(reps).tolist() == bits.sum(axis=0).tolist()
    # both forms are accepted, mixed
    mixed = [format(x, "x") if i % 2 else x for i, x in enumerate(decoded)]
    assert o.support(mixed).tolist() == bits.sum(axis=0).tolist()


def test_oue_support_rejects_bad_reports() -> None:
    o = OUE(4, 1.0)
    for bad in ([16], [-1], ["zz"], ["10"], [1.5], [None]):
        with pytest.raises(ValueError):
            o.support(bad)
    assert o.support(["f", 1]).tolist() == [2, 1, 1, 1]


def test_olh_support_matches_naive_count() -> None:
    o = OLH(300, 2.0)
    rng = np.random.default_rng(3)
    reps = o.perturb(rng.integers(0, 300, 400), rng)
    # extreme hash parameters too
    reps += [[MERSENNE_P - 1, MERSENNE_P - 1, 0], [1, 0, 1], [MERSENNE_P - 1, 0, o.g - 1]]
    json.dumps(reps)
    naive = np.zeros(300, dtype=np.int64)
    for a, b, y in reps:
        for v in range(300):
            naive[v] += ((a * v + b) % MERSENNE_P) % o.g == y
    assert o.support(reps).tolist() == naive.tolist()


def test_olh_support_rejects_bad_reports() -> None:
    o = OLH(5, 1.0)
    for bad in ([[0, 1, 1]], [[1, MERSENNE_P, 1]], [[1, 1, o.g]], [[1, 2]], [["x", 1, 1]], [[1.0, 1.0, 1.0]],
                [[1, 1, 1], [1, 1]], [1, 1, 1], [[2**70, 1, 1]]):
        with pytest.raises(ValueError):
            o.support(bad)
    assert o.support([]).tolist() == [0] * 5


# -- choice and parameters ------------------------------------------------------------------------------


def test_choose_oracle_boundary() -> None:
    for eps in (0.5, 1.0, 2.0, 4.0):
        bound = 3 * math.exp(eps) + 2
        below, above = math.ceil(bound) - 1, math.ceil(bound)
        assert choose_oracle(below, eps) is GRR
        assert choose_oracle(above, eps) is OLH
    assert choose_oracle(2, 0.01) is GRR
    assert choose_oracle(10, 1.0) is GRR and choose_oracle(11, 1.0) is OLH
    assert choose_oracle(24, 2.0) is GRR and choose_oracle(25, 2.0) is OLH


def test_choose_oracle_hints_and_errors() -> None:
    assert choose_oracle(100, 1.0, "GRR") is GRR
    assert choose_oracle(3, 1.0, "OUE") is OUE
    assert choose_oracle(3, 1.0, "OLH") is OLH
    o = make_oracle(30, 1.0)
    assert isinstance(o, OLH) and o.k == 30 and o.epsilon == 1.0
    for hint in ("grr", "RAPPOR", ""):
        with pytest.raises(ValueError):
            choose_oracle(5, 1.0, hint)
    for k, eps in ((1, 1.0), (0, 1.0), (5, 0.0), (5, -1.0), (5, math.nan), (5, math.inf), (2.5, 1.0)):
        with pytest.raises(ValueError):
            choose_oracle(k, eps)  # type: ignore[arg-type]
    for cls in (GRR, OUE, OLH):
        with pytest.raises(ValueError):
            cls(1, 1.0)
        with pytest.raises(ValueError):
            cls(4, 0.0)


def test_params() -> None:
    assert set(GRR(5, 1.0).params()) == {"k", "epsilon", "p", "q"}
    assert set(OUE(5, 1.0).params()) == {"k", "epsilon", "p", "q"}
    assert set(OLH(5, 1.0).params()) == {"k", "epsilon", "p", "q", "g"}
    assert GRR(5, 1.0).params()["p"] / GRR(5, 1.0).params()["q"] == pytest.approx(math.e)


def test_secure_rng_is_a_chacha20_keystream() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    from stream.ldp.csprng import ChaChaRandom

    a, b = secure_rng(), secure_rng()
    assert isinstance(a, ChaChaRandom) and not a.seeded
    assert a.integers(0, 2**62, 4).tolist() != b.integers(0, 2**62, 4).tolist()
    # a seeded one (tests, benchmarks) is exactly ChaCha20 under SHA-256 of the seed
    import hashlib

    key = hashlib.sha256(b"streamgate/ldp-test-seed\x00" + b"7").digest()
    want = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * 64)
    assert ChaChaRandom(7).bytes(64) == want
    u = ChaChaRandom(7).random(200_000)
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.005
    ints = ChaChaRandom(8).integers(0, 5, size=100_000)
    assert set(np.unique(ints).tolist()) == {0, 1, 2, 3, 4}
    assert np.all(np.abs(np.bincount(ints) / 100_000 - 0.2) < 0.01)


# -- post-processing --------------------------------------------------------------------------------------

vectors = st.lists(st.floats(-5, 5, allow_nan=False, allow_infinity=False), min_size=1, max_size=7).map(
    lambda xs: np.array(xs, dtype=np.float64))


def _brute_force_projection(v: np.ndarray) -> np.ndarray:
    """The projection lies in the relative interior of a face: try the affine projection onto every
    face and keep the closest feasible one."""
    best, best_d = None, math.inf
    for r in range(1, v.size + 1):
        for s in itertools.combinations(range(v.size), r):
            idx = list(s)
            x = np.zeros(v.size)
            x[idx] = v[idx] - (v[idx].sum() - 1.0) / r
            if x.min() >= -1e-12:
                d = float(np.sum((x - v) ** 2))
                if d < best_d:
                    best, best_d = x, d
    assert best is not None
    return best


@settings(max_examples=300, deadline=None)
@given(vectors)
def test_project_simplex_properties(v: np.ndarray) -> None:
    x = project_simplex(v)
    assert x.shape == v.shape
    assert x.min() >= 0.0
    assert x.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(project_simplex(x), x, atol=1e-12)  # idempotent
    np.testing.assert_allclose(x, _brute_force_projection(v), atol=1e-9)


def test_project_simplex_examples() -> None:
    np.testing.assert_allclose(project_simplex(np.array([0.5, 0.7, -0.2])), [0.4, 0.6, 0.0])
    np.testing.assert_allclose(project_simplex(np.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5])
    np.testing.assert_allclose(project_simplex(np.array([-1.0, -1.0])), [0.5, 0.5])
    for bad in (np.array([]), np.array([[1.0]]), np.array([np.nan, 1.0])):
        with pytest.raises(ValueError):
            project_simplex(bad)


@given(vectors)
def test_clip_renormalize(v: np.ndarray) -> None:
    x = clip_renormalize(v)
    assert x.min() >= 0.0 and x.sum() == pytest.approx(1.0)
    if v.max() <= 0:
        np.testing.assert_allclose(x, np.full(v.size, 1.0 / v.size))
    else:
        assert np.all(x[v <= 0] == 0)
