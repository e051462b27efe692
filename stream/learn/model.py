"""The purchase-propensity model: a River logistic regression on private examples only.

Why this shape: the model's verbs take a :class:`~stream.learn.example.PrivateExample`
and nothing else (``TypeError`` for a dict, so a clear or protected event can
never be learned from, even by mistake); features come from
:class:`~stream.learn.features.FeatureMap` (debiased, so the expected score on
a report equals the score on the clear values); the target is the
noise-corrected label (:func:`~stream.learn.losses.corrected_label`) under the
log loss (:class:`~stream.learn.losses.CorrectedLog`), whose expectation over
the label noise is the clean log loss (Natarajan et al. 2013). The label
correction is exact (the log loss is linear in its target). The feature
correction is not: the score is linear in the debiased features, so its
expectation is the clean score, but the log loss is convex in the score
(``E[softplus(w.x~)] > softplus(w.x)``), so SGD on noisy features shrinks the
weights (attenuation; tested in ``tests/learn/test_learn_model.py``). Predictions
estimate ``P(clean label = 1)`` only approximately. This model learns the per-event
``private-example.v1`` stream (``STREAMGATE_LEARN_MODEL=logistic``); the default learner
is :class:`stream.learn.joint.JointNaiveBayes`.

Defaults (AdaGrad at ``learning_rate=0.02``, no scaler, ``l2=0``) were measured with
``streamgate bench learn``'s harness on the synthetic clickstream (100k events, seed 1,
features and label at the same eps; the private stream built by the real privatizer and
session labeler). Two figures per cell: progressive ROC-AUC against the clean labels
(predicting every example of a released chunk before learning any of it), and ROC-AUC of
the final model serving a held-out continuation of the stream on clear values:

    optimizer             eps 2 progressive / serve     eps inf progressive / serve
    AdaGrad 0.02          0.545 / 0.672                 0.676 / 0.692
    AdaGrad 0.05          0.545 / 0.668                 0.686 / 0.695
    SGD 0.01              0.512 / 0.639                 0.667 / 0.691
    SGD 0.003             0.523 / 0.646                 0.670 / 0.690
    scaler + SGD 0.01     0.510 / 0.639                 0.632 / 0.676
    scaler + AdaGrad 0.02 0.546 / 0.670                 0.688 / 0.695

AdaGrad's per-feature steps suit features of very different noise (a debiased
31-value OLH indicator is about 2.3 or -0.3 at eps = 2; the hour one-hot is exact);
the scaler adds nothing then, and it breaks raw (sparse) indicators: a feature that
is present only when it is 1 has zero variance, so it scales to 0 and never learns.
l2 in {1e-4, 1e-3} changed nothing. A warning on measuring: examples of a session
arrive together, all with the session's label, so learning one before predicting the
next leaks the label through the fast-moving weights - event-by-event progressive AUC
was 0.05-0.1 too high (0.80+ for scaler + SGD on clear data). The learner worker and
the benchmark predict a whole batch before learning it.

``debias=False`` (raw support indicators) learns as well on the private stream (0.541
progressive at eps 2 with AdaGrad 0.05): debiasing is an affine map of each indicator,
so it does not change what a linear model can express; it is on by default because it
makes the weights mean what they mean on clear data (:meth:`predict_proba_event`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from river import compose, linear_model, optim, preprocessing, utils

from stream.errors import InvalidExampleError
from stream.learn.example import PrivateExample
from stream.learn.features import FeatureMap
from stream.learn.losses import CorrectedLog, corrected_label, flip_probability

__all__ = ["DEFAULT_MODEL_NAME", "PropensityModel"]

DEFAULT_MODEL_NAME = "purchase-propensity"


class PropensityModel:
    """River pipeline on private examples. Verbs: :meth:`learn_one` / :meth:`predict_proba_one`.

    ``correction``: learn on the Natarajan-corrected label (else on the raw randomized bit).
    ``debias``: debiased categorical features (else raw support indicators).
    ``optimizer``: ``"adagrad"`` (default) or ``"sgd"``; ``learning_rate``: its step (weights and
    intercept). ``l2``: ridge penalty. ``scale``: a river ``StandardScaler`` before the regression.
    ``seed``: kept with the model for reproducibility records; the pipeline itself is deterministic
    (zero-initialized weights, no sampling).
    ``domains`` / ``bounds`` / ``out_of_domain``: the LDP attributes' domains (schema order,
    ``_none`` last when optional), numeric bounds and out-of-domain buckets, needed only to serve on
    clear values (:meth:`predict_proba_event`) and to name weights (:meth:`weights`);
    :meth:`for_policy` fills them from an :class:`~stream.ldp.policy.LdpPolicy`.
    """

    def __init__(
        self,
        *,
        name: str = DEFAULT_MODEL_NAME,
        correction: bool = True,
        debias: bool = True,
        optimizer: str = "adagrad",
        learning_rate: float = 0.02,
        l2: float = 0.0,
        scale: bool = False,
        seed: int | None = None,
        domains: Mapping[str, Sequence[str]] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        out_of_domain: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        if not (
            isinstance(learning_rate, int | float) and math.isfinite(learning_rate) and learning_rate > 0
        ):
            raise ValueError("learning_rate must be a finite number > 0")
        if not (isinstance(l2, int | float) and math.isfinite(l2) and l2 >= 0):
            raise ValueError("l2 must be a finite number >= 0")
        if optimizer not in ("adagrad", "sgd"):
            raise ValueError("optimizer must be 'adagrad' or 'sgd'")
        self.name = name
        self.optimizer = optimizer
        self.correction = bool(correction)
        self.debias = bool(debias)
        self.learning_rate = float(learning_rate)
        self.l2 = float(l2)
        self.scale = bool(scale)
        self.seed = seed
        self.domains: dict[str, tuple[str, ...]] = {a: tuple(d) for a, d in (domains or {}).items()}
        self.bounds: dict[str, tuple[float, float]] = {
            a: (float(lo), float(hi)) for a, (lo, hi) in (bounds or {}).items()
        }
        self.out_of_domain: dict[str, str] = dict(out_of_domain or {})
        self.features = FeatureMap(debias=self.debias)
        self.regression = linear_model.LogisticRegression(
            optimizer=optim.AdaGrad(self.learning_rate) if optimizer == "adagrad" else optim.SGD(self.learning_rate),
            loss=CorrectedLog(),
            l2=self.l2,
            intercept_lr=self.learning_rate,
        )
        self.pipeline: compose.Pipeline = (
            compose.Pipeline(preprocessing.StandardScaler(), self.regression)
            if self.scale
            else compose.Pipeline(self.regression)
        )
        self.examples_seen = 0

    @classmethod
    def for_policy(cls, policy: Any, **kwargs: Any) -> PropensityModel:
        """A model whose domains, bounds and out-of-domain buckets are those of ``policy`` (an
        :class:`~stream.ldp.policy.LdpPolicy`: ``attributes`` with ``name``, ``kind``, ``domain``,
        ``out_of_domain``, ``lo``, ``hi``)."""
        domains: dict[str, tuple[str, ...]] = {}
        bounds: dict[str, tuple[float, float]] = {}
        ood: dict[str, str] = {}
        for a in policy.attributes:
            if a.kind == "categorical":
                domains[a.name] = tuple(a.domain)
                if a.out_of_domain is not None:
                    ood[a.name] = a.out_of_domain
            else:
                bounds[a.name] = (float(a.lo), float(a.hi))
        return cls(domains=domains, bounds=bounds, out_of_domain=ood, **kwargs)

    def __repr__(self) -> str:
        return (
            f"PropensityModel(name={self.name!r}, correction={self.correction}, debias={self.debias}, "
            f"optimizer={self.optimizer!r}, learning_rate={self.learning_rate:g}, l2={self.l2:g}, scale={self.scale}, "
            f"examples_seen={self.examples_seen})"
        )

    # -- the verbs --------------------------------------------------------------------------------
    @staticmethod
    def _check(example: Any, verb: str) -> PrivateExample:
        if not isinstance(example, PrivateExample):
            raise TypeError(
                f"PropensityModel.{verb} takes a PrivateExample (parse records with PrivateExample.from_json), "
                f"not {type(example).__name__}"
            )
        return example

    def target(self, example: PrivateExample) -> float:
        """The regression target of a labelled example: the corrected label (or the raw bit)."""
        example = self._check(example, "target")
        if example.label is None or example.label_epsilon is None:
            raise InvalidExampleError("the example has no label (a private-feature.v1 report)")
        if not self.correction:
            return float(example.label)
        rho = flip_probability(example.label_epsilon)
        return corrected_label(example.label, rho, rho)

    def learn_one(self, example: PrivateExample) -> None:
        """One SGD step on a labelled private example."""
        t = self.target(example)
        self.pipeline.learn_one(self.features.transform(example), t)
        self.examples_seen += 1

    def predict_proba_one(self, example: PrivateExample) -> float:
        """Estimated ``P(clean label = 1)`` for a private report (labelled or not)."""
        example = self._check(example, "predict_proba_one")
        return self._proba(self.features.transform(example))

    def predict_proba_event(self, values: Mapping[str, Any], hour_of_week: int | None = None) -> float:
        """``P(label = 1)`` from *clear* LDP attribute values (serving where they are legitimately
        clear); needs the domains/bounds given at construction and a debiased model (the clear
        one-hot is the expectation of the debiased features, not of raw support indicators)."""
        if not self.debias:
            raise ValueError("predict_proba_event needs a model trained on debiased features")
        if not self.domains and not self.bounds:
            raise ValueError("predict_proba_event needs the model's domains/bounds (see for_policy)")
        x = self.features.transform_clear(
            values, self.domains, self.bounds, hour_of_week, out_of_domain=self.out_of_domain
        )
        return self._proba(x)

    def _proba(self, x: dict[str, float]) -> float:
        proba = self.pipeline.predict_proba_one(x)
        return float(proba.get(True, 0.0))

    # -- parameters (federated averaging) ---------------------------------------------------------
    def parameters(self) -> tuple[dict[str, float], float]:
        """(weights keyed by feature, intercept): a copy of what federated averaging averages. Not
        included: the optimizer's state (AdaGrad's per-feature squared-gradient sums)."""
        return {str(k): float(v) for k, v in self.regression.weights.items()}, float(self.regression.intercept)

    def set_parameters(self, weights: Mapping[str, float], intercept: float) -> None:
        """Replace the weights and the intercept (the optimizer's state is kept). Refused for a model with a
        scaler: its weights apply to this instance's own standardization, so they cannot be exchanged."""
        if self.scale:
            raise ValueError("a model with a StandardScaler cannot take averaged parameters")
        self.regression._weights = utils.VectorDict({str(k): float(v) for k, v in weights.items()})
        self.regression.intercept = float(intercept)

    # -- inspection -------------------------------------------------------------------------------
    @property
    def intercept(self) -> float:
        return float(self.regression.intercept)

    def weights(self, *, named: bool = True) -> dict[str, float]:
        """The regression weights. ``named``: ``attr=<index>`` becomes ``attr=<domain value>`` where
        the domain is known. With ``scale=True`` the weights apply to standardized features."""
        raw = {str(k): float(v) for k, v in self.regression.weights.items()}
        if not named:
            return raw
        out: dict[str, float] = {}
        for key, w in raw.items():
            attr, sep, idx = key.partition("=")
            domain = self.domains.get(attr)
            if sep and domain is not None and idx.isdigit() and int(idx) < len(domain):
                key = f"{attr}={domain[int(idx)]}"
            out[key] = w
        return out
