r"""Learning from randomized labels: the noise-corrected log loss.

The label of a ``private-example.v1`` record is the true bit ``y`` passed through
binary randomized response at ``eps``: it is flipped with probability
``rho = 1 / (e^eps + 1)``, the same for both classes. Training on it naively
fits ``P(observed = 1 | x) = rho + (1 - 2 rho) P(y = 1 | x)``: the
probabilities are squashed towards 1/2 and the coefficients attenuated.

Natarajan, Dhillon, Ravikumar, Tewari, "Learning with Noisy Labels" (NeurIPS
2013), Lemma 1: with class-conditional flip rates ``rho_pos = P(flip | y=1)``,
``rho_neg = P(flip | y=0)`` and ``D = 1 - rho_pos - rho_neg > 0``, the loss

    l~(t, y~) = ((1 - rho_{-y~}) l(t, y~) - rho_{y~} l(t, -y~)) / D

is unbiased: ``E_{y~ | y}[l~(t, y~)] = l(t, y)``. For the log loss this needs no
special machinery, because the log loss is *linear in the target*:

    l(z, t) = -t log s(z) - (1 - t) log(1 - s(z)) = softplus(z) - t z      (s = sigmoid)

So for any real-valued target estimate ``T`` with ``E[T | y] = y``,
``E[l(z, T) | y] = softplus(z) - E[T | y] z = l(z, y)``. :func:`corrected_label`
is exactly such a ``T`` (the unbiased estimator of the indicator ``y``,
``T(1) = (1 - rho_neg) / D``, ``T(0) = -rho_neg / D``), and expanding
``l(z, T(y~))`` gives Natarajan's ``l~`` term for term. Hence
:class:`CorrectedLog` evaluated at the corrected label IS Natarajan's corrected
loss, and its gradient ``s(z) - T`` is unbiased for the clean gradient
``s(z) - y``. The loss stays convex in ``z`` (softplus plus a linear term), so
SGD on a linear model is well behaved; per example it is unbounded below when
``T`` lies outside ``[0, 1]``, which is why a small L2 or a moderate learning rate
matters more than with clean labels (the variance grows like ``1 / D^2``).

Memoization: a person's randomized label is memoized per (person, epoch, true
label value), so all events of that person with the same true label carry the
same noisy bit: the noise is correlated across a person's examples. That does
not bias the corrected loss - the marginal flip probability of every example is
still ``rho``, and unbiasedness is a statement about each example's
expectation - it only raises the variance of the empirical risk (fewer
independent draws than examples).

Prediction keeps the logistic link: :meth:`CorrectedLog.mean_func` is river's
sigmoid, so ``predict_proba_one`` estimates ``P(y = 1 | x)`` for the *clean*
label once the weights have converged to the clean-risk minimizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from river.optim.losses import BinaryLoss

__all__ = ["CorrectedLog", "corrected_label", "flip_probability"]


def flip_probability(epsilon: float) -> float:
    """Binary randomized response's flip probability ``1 / (e^eps + 1)`` (``inf`` -> 0.0).

    ValueError unless ``epsilon`` is a number > 0 (NaN included)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
        raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}")
    if math.isinf(epsilon):
        return 0.0
    e = math.exp(-float(epsilon))  # 1/(e^eps + 1) = e^-eps / (1 + e^-eps): no overflow
    return e / (1.0 + e)


def corrected_label(observed: int, rho_pos: float, rho_neg: float) -> float:
    """Unbiased estimate of the clean label from an observed (flipped) one.

    ``rho_pos = P(flip | y = 1)``, ``rho_neg = P(flip | y = 0)``, ``D = 1 - rho_pos - rho_neg``:
    observed 1 -> ``(1 - rho_neg) / D``, observed 0 -> ``-rho_neg / D``; then
    ``E[corrected | y] = y`` for ``y`` in {0, 1}. ValueError if ``rho_pos + rho_neg >= 1``
    (the labels carry no information), if a rate is outside ``[0, 1)`` or ``observed`` is not 0/1.
    """
    if not (0.0 <= rho_pos < 1.0 and 0.0 <= rho_neg < 1.0):
        raise ValueError("flip probabilities must be in [0, 1)")
    d = 1.0 - rho_pos - rho_neg
    if d <= 0.0:
        raise ValueError("rho_pos + rho_neg must be < 1 for the labels to carry information")
    if isinstance(observed, bool | np.bool_):
        observed = int(observed)
    if observed == 1:
        return (1.0 - rho_neg) / d
    if observed == 0:
        return -rho_neg / d
    raise ValueError("observed label must be 0 or 1")


def _softplus(z: float) -> float:
    if z > 30.0:
        return z + math.exp(-z)
    if z < -30.0:
        return math.exp(z)
    return math.log1p(math.exp(z))


def _sigmoid(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class CorrectedLog(BinaryLoss):
    """Log loss on a real-valued target ``t``: ``softplus(z) - t z``, gradient ``sigmoid(z) - t``.

    With ``t`` = :func:`corrected_label` of a randomized label this is Natarajan et al.'s
    unbiased loss (module docstring); with a bool or 0/1 target it equals river's
    :class:`~river.optim.losses.Log`. ``mean_func`` (river's sigmoid) is inherited.
    """

    def __call__(self, y_true: Any, y_pred: Any) -> Any:
        if isinstance(y_true, np.ndarray) or isinstance(y_pred, np.ndarray):
            t = np.asarray(y_true, dtype=np.float64)
            z = np.asarray(y_pred, dtype=np.float64)
            return np.logaddexp(0.0, z) - t * z
        raw = float(y_pred)
        return _softplus(raw) - float(y_true) * raw

    def gradient(self, y_true: Any, y_pred: Any) -> Any:
        if isinstance(y_true, np.ndarray) or isinstance(y_pred, np.ndarray):
            t = np.asarray(y_true, dtype=np.float64)
            z = np.asarray(y_pred, dtype=np.float64)
            out: np.ndarray = 1.0 / (1.0 + np.exp(-z)) - t
            return out
        return _sigmoid(float(y_pred)) - float(y_true)
