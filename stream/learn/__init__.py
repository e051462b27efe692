"""Online learning on the private stream: the pure core (no Kafka, no Redis, no I/O).

Models learn only from local-DP reports, never from clear values. The default,
:class:`JointNaiveBayes` (:mod:`stream.learn.joint`), learns naive Bayes from one
joint (value, label) report per person and epoch (:class:`JointReport`). The
per-event :class:`PropensityModel` learns from :class:`PrivateExample` records
(parsed strictly from ``features.private``): the features are debiased
estimates of the one-hot encoding (:mod:`stream.learn.features`), the
randomized label is corrected so the expected loss is the clean log loss
(:mod:`stream.learn.losses`, Natarajan et al. 2013), progressive validation and
drift detection live in :mod:`stream.learn.evaluate`, and signed snapshots -
never unpickled unless authenticated - in :mod:`stream.learn.snapshot`. The
learner worker (``stream/apps/``) is a thin adapter over this package.
"""

from __future__ import annotations

from stream.errors import InvalidExampleError, SnapshotError
from stream.learn.evaluate import DriftEvent, DriftMonitor, ProgressiveValidation, log_loss
from stream.learn.example import EXAMPLE_SCHEMA, FEATURE_SCHEMA, LABEL_NAME, PrivateExample, Report
from stream.learn.features import FeatureMap
from stream.learn.joint import JOINT_SCHEMA, JointNaiveBayes, JointReport
from stream.learn.losses import CorrectedLog, corrected_label, flip_probability
from stream.learn.model import DEFAULT_MODEL_NAME, PropensityModel
from stream.learn.snapshot import SIGNING_PURPOSE, SNAPSHOT_FORMAT, ModelSnapshot

__all__ = [
    "DEFAULT_MODEL_NAME",
    "EXAMPLE_SCHEMA",
    "FEATURE_SCHEMA",
    "JOINT_SCHEMA",
    "LABEL_NAME",
    "SIGNING_PURPOSE",
    "SNAPSHOT_FORMAT",
    "CorrectedLog",
    "DriftEvent",
    "DriftMonitor",
    "FeatureMap",
    "InvalidExampleError",
    "JointNaiveBayes",
    "JointReport",
    "ModelSnapshot",
    "PrivateExample",
    "ProgressiveValidation",
    "PropensityModel",
    "Report",
    "SnapshotError",
    "corrected_label",
    "flip_probability",
    "log_loss",
]
