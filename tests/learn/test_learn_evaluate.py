"""Progressive validation computes river's ROC-AUC and log loss; the drift monitor detects an abrupt
change of the loss and stays quiet on a stationary stream of the same length."""

from __future__ import annotations

import math

import numpy as np
import pytest
from river import metrics

from stream.learn.evaluate import DriftMonitor, ProgressiveValidation, log_loss


def _sequence(n: int, seed: int) -> list[tuple[bool, float]]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    p = np.clip(0.25 + 0.2 * y + 0.15 * rng.standard_normal(n), 0.0, 1.0)
    out = list(zip(y.tolist(), p.tolist(), strict=True))
    # edge values: exactly on thresholds, 0 and 1
    out += [(True, 0.0), (False, 1.0), (True, 0.5), (False, 1 / 9), (True, 1.0), (False, 0.0)]
    return out


@pytest.mark.parametrize("n_thresholds", [2, 10, 101, 1001])
def test_matches_river_metrics(n_thresholds: int) -> None:
    pv = ProgressiveValidation(n_thresholds=n_thresholds)
    auc, ll = metrics.ROCAUC(n_thresholds=n_thresholds), metrics.LogLoss()
    for y, p in _sequence(400, seed=n_thresholds):
        pv.update(y, p)
        auc.update(y, p)
        ll.update(y, p)
    out = pv.as_dict()
    assert out["roc_auc"] == pytest.approx(auc.get(), abs=1e-12)
    assert out["log_loss"] == pytest.approx(ll.get(), rel=1e-12)
    assert out["n"] == 406


def test_empty_and_one_class_like_river() -> None:
    pv, auc = ProgressiveValidation(n_thresholds=10), metrics.ROCAUC()
    assert pv.as_dict()["n"] == 0 and pv.roc_auc() == auc.get()
    for p in (0.2, 0.7):
        pv.update(True, p)
        auc.update(True, p)
    assert pv.roc_auc() == auc.get()


def test_the_fine_grid_is_close_to_the_exact_auc() -> None:
    seq = _sequence(3000, seed=3)
    pv = ProgressiveValidation()
    for y, p in seq:
        pv.update(y, p)
    pos = np.array([p for y, p in seq if y])
    neg = np.array([p for y, p in seq if not y])
    exact = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert pv.roc_auc() == pytest.approx(exact, abs=0.005)


def test_log_loss_helper_and_nan() -> None:
    assert log_loss(True, 0.25) == pytest.approx(math.log(4))
    assert log_loss(False, 0.25) == pytest.approx(-math.log(0.75))
    assert log_loss(True, 0.0) == pytest.approx(-math.log(1e-15))
    with pytest.raises(ValueError):
        ProgressiveValidation().update(True, math.nan)
    with pytest.raises(ValueError):
        ProgressiveValidation(n_thresholds=1)


def _losses(n: int, rate: float, seed: int, p: float = 0.2) -> list[float]:
    """Per-example log losses of a fixed prediction p on Bernoulli(rate) labels."""
    y = np.random.default_rng(seed).random(n) < rate
    return [log_loss(bool(v), p) for v in y]


N = 4000


def test_drift_is_detected_after_an_abrupt_change() -> None:
    stream = _losses(N // 2, 0.2, seed=1) + _losses(N // 2, 0.6, seed=2)  # mean loss ~0.50 -> ~1.05
    mon = DriftMonitor()
    hits = [i for i, loss in enumerate(stream) if mon.update(loss)]
    assert hits, "no drift detected"
    assert N // 2 <= hits[0] < N // 2 + 400  # soon after the change, never before it
    assert mon.detections == len(hits)
    assert mon.last is not None and mon.last.n == hits[-1] + 1
    first = mon.last
    assert first.mean_after > first.mean_before
    assert mon.width < N


def test_no_drift_on_a_stationary_stream_of_the_same_length() -> None:
    for seed in (1, 2, 3):
        mon = DriftMonitor()
        assert not any(mon.update(loss) for loss in _losses(N, 0.2, seed=seed))
        assert mon.detections == 0 and mon.last is None
        assert mon.mean_loss == pytest.approx(0.2 * math.log(5) + 0.8 * -math.log(0.8), abs=0.05)


def test_losses_are_clipped() -> None:
    mon = DriftMonitor(max_loss=5.0)
    mon.update(1e9)
    assert mon.mean_loss == 5.0
    mon.update(-3.0)
    assert mon.mean_loss == 2.5
    with pytest.raises(ValueError):
        mon.update(math.nan)
    with pytest.raises(ValueError):
        DriftMonitor(delta=0.0)
