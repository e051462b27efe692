"""The demo's stated trade-off: at its epsilon the demo's 20k events teach the model; at the
default epsilon they do not. The same pipeline as `streamgate bench learn` (privatizer, labeler,
learner cores), scored on held-out clean labels."""

from __future__ import annotations

import pytest

from stream.bench.learn import PERSON_SHARES, synthetic_run
from stream.demo import DEMO_EPSILON, DEMO_PERSON_MEMOS

pytestmark = pytest.mark.slow


def _served_auc(eps_per_report: float, person_cap: float, seed: int) -> float:
    (run,) = synthetic_run(eps_per_report * PERSON_SHARES, seed, events=20_000, holdout=5_000, n_users=10_000,
                           budget=person_cap, models=("corrected",), label_epsilon=eps_per_report)
    return run.auc_serve


def test_the_demo_epsilon_learns_and_the_default_does_not_at_demo_scale() -> None:
    demo = _served_auc(DEMO_EPSILON, DEMO_PERSON_MEMOS * DEMO_EPSILON, seed=0)
    default = _served_auc(1.0, 12.0, seed=0)
    assert demo >= 0.62, demo  # measured 0.665-0.678 over two seeds
    assert default <= 0.58, default  # measured 0.489-0.558
