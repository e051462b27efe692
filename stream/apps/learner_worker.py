"""The learner worker: a :class:`~stream.apps.learner.LearnerEngine`, or with
``STREAMGATE_LEARN_FEDERATED`` one of N federated learners (:mod:`stream.apps.federated`).

Its own module so that neither engine module imports the other's (federated builds on learner).
"""

from __future__ import annotations

import faust

from stream.apps.federated import FederatedLearnerEngine
from stream.apps.hosting import worker_app
from stream.apps.learner import LearnerEngine
from stream.config import Settings
from stream.ops.metrics import WorkerMetrics

__all__ = ["create_app"]


def create_app(settings: Settings) -> faust.App:
    """The learner's Faust app. ``streamgate learner`` runs it as a worker (hosted like every
    worker: :mod:`stream.apps.hosting`)."""

    def build(metrics: WorkerMetrics) -> LearnerEngine:
        if settings.learn_federated:  # one of N learners, aggregating while it holds the updates partition
            return FederatedLearnerEngine(settings, metrics=metrics)
        return LearnerEngine(settings, metrics=metrics)

    return worker_app(settings, "learner", build, lambda engine: engine.as_dict())
