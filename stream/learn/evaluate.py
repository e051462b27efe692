"""Progressive validation and drift detection for the online learners.

Progressive validation (predict on each example *before* learning from it) is
the honest online metric: every prediction is made on an example the model has
not seen. On the private stream the labels are randomized, so the metric
measured there is against noisy labels - still informative for relative
changes and drift; in benchmarks the synthetic generator's clean labels give
the real figure.

:class:`ProgressiveValidation` computes river's definitions of ROC-AUC
(``river.metrics.ROCAUC``: the trapezoid under the ROC curve at fixed,
evenly spaced thresholds) and log loss (``river.metrics.LogLoss``). The AUC is
kept as two histograms over the thresholds instead of river's one confusion
matrix per threshold: identical results (tested), O(log n) per update instead
of O(n), so a fine grid (1001 thresholds by default, river's default is 10) is
affordable - with 10 thresholds the AUC of a model whose probabilities sit in
[0.1, 0.5] is badly underestimated.

:class:`DriftMonitor` runs river's ADWIN over the per-example log loss,
clipped to ``[0, max_loss]`` and divided by ``max_loss`` so ADWIN sees values in
``[0, 1]`` (its bound is designed for that range, and one wild prediction must
not look like a drift).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from river import drift, metrics

__all__ = ["DriftEvent", "DriftMonitor", "ProgressiveValidation", "log_loss"]

_P_MIN = 1e-15


def log_loss(y_true: bool, p: float) -> float:
    """Per-example log loss of probability ``p`` for ``y_true`` (p clamped to [1e-15, 1 - 1e-15], as river)."""
    p = min(max(float(p), _P_MIN), 1.0 - _P_MIN)
    return -math.log(p) if y_true else -math.log(1.0 - p)


class ProgressiveValidation:
    """ROC-AUC (river's thresholded definition) + log loss + count; ``update(y_true, p)``."""

    def __init__(self, n_thresholds: int = 1001) -> None:
        if isinstance(n_thresholds, bool) or not isinstance(n_thresholds, int) or n_thresholds < 2:
            raise ValueError("n_thresholds must be an integer >= 2")
        self.n_thresholds = n_thresholds
        # exactly river.metrics.ROCAUC's thresholds
        th = [i / (n_thresholds - 1) for i in range(n_thresholds)]
        th[0] -= 1e-7
        th[-1] += 1e-7
        self._thresholds = th
        # bin j = number of thresholds strictly below p (p > t_i exactly for i < j)
        self._pos = [0.0] * (n_thresholds + 1)
        self._neg = [0.0] * (n_thresholds + 1)
        self._log_loss = metrics.LogLoss()
        self.n = 0

    def update(self, y_true: bool, p: float) -> None:
        """Record one prediction ``p = P(label = 1)`` made before learning the example ``y_true``."""
        p = float(p)
        if math.isnan(p):
            raise ValueError("p must not be NaN")
        j = bisect.bisect_left(self._thresholds, p)
        if y_true:
            self._pos[j] += 1.0
        else:
            self._neg[j] += 1.0
        self._log_loss.update(bool(y_true), p)
        self.n += 1

    def roc_auc(self) -> float:
        n_thr = self.n_thresholds
        total_pos = sum(self._pos)
        total_neg = sum(self._neg)
        tprs = [0.0] * n_thr
        fprs = [0.0] * n_thr
        # positives predicted positive at threshold i: those in bins j > i
        tp = total_pos - self._pos[0]
        fp = total_neg - self._neg[0]
        for i in range(n_thr):
            tprs[i] = tp / total_pos if total_pos else 0.0
            fprs[i] = fp / total_neg if total_neg else 0.0
            tp -= self._pos[i + 1]
            fp -= self._neg[i + 1]
        area = 0.0
        for i in range(n_thr - 1):
            area += (fprs[i + 1] - fprs[i]) * (tprs[i + 1] + tprs[i]) / 2.0
        return -area

    def log_loss(self) -> float:
        return float(self._log_loss.get())

    def as_dict(self) -> dict[str, float]:
        return {"roc_auc": self.roc_auc(), "log_loss": self.log_loss(), "n": self.n}


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """One detection: when (examples fed so far), the window width kept after it, and the mean
    loss over the window just before and just after the detection (loss units)."""

    n: int
    width: int
    mean_before: float
    mean_after: float


class DriftMonitor:
    """ADWIN (``delta``, river's default 0.002) on the per-example log loss, clipped to
    ``[0, max_loss]`` (default ``-log(1e-3)`` ~ 6.9, a probability of 0.001 on the observed label)."""

    def __init__(self, delta: float = 0.002, max_loss: float = -math.log(1e-3)) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError("delta must be in (0, 1)")
        if not (math.isfinite(max_loss) and max_loss > 0.0):
            raise ValueError("max_loss must be finite and > 0")
        self.delta = float(delta)
        self.max_loss = float(max_loss)
        self._adwin = drift.ADWIN(delta=self.delta)
        self.detections = 0
        self.n = 0
        self.last: DriftEvent | None = None

    @property
    def mean_loss(self) -> float:
        """Mean clipped loss over ADWIN's current window."""
        return float(self._adwin.estimation) * self.max_loss

    @property
    def width(self) -> int:
        return int(self._adwin.width)

    def update(self, loss: float) -> bool:
        """Feed one example's loss; True when a drift is detected at this example."""
        x = float(loss)
        if math.isnan(x):
            raise ValueError("loss must not be NaN")
        x = min(max(x, 0.0), self.max_loss) / self.max_loss
        before = self.mean_loss
        self._adwin.update(x)
        self.n += 1
        if not self._adwin.drift_detected:
            return False
        self.detections += 1
        self.last = DriftEvent(self.n, self.width, before, self.mean_loss)
        return True
