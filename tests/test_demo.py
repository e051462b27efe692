"""What the demo's people teach the model: at its epsilon and at the default one, more than the value the
label's definition fixes (purchase events first), less than the clear examples. The same learner and
one-example-per-person sampling as `streamgate bench learn --people`, at the demo's scale (20,000 events
of the demo's generator, one epoch), scored on held-out clean labels."""

from __future__ import annotations

import statistics

import pytest

from stream.bench.learn import auc, joint_nb_run, people_stream
from stream.demo import DEMO_EPSILON
from stream.ldp.examples import EXPECTED_PEOPLE

pytestmark = pytest.mark.slow


def test_the_demo_people_teach_the_model_more_than_the_label_definition_at_demo_scale() -> None:
    demo, default, clear, known = [], [], [], []
    for seed in (0, 1, 2):
        st = people_stream(0, seed, events=20_000, n_users=10_000, holdout=5000)
        assert 1900 < len(st.labels) < 2300  # the people of 20,000 events: one example each
        # the privatizer plans its attribute draw for EXPECTED_PEOPLE, not for the demo's 2,000
        demo.append(joint_nb_run(st, DEMO_EPSILON, seed, people=len(st.labels), plan_people=EXPECTED_PEOPLE).auc_serve)
        default.append(joint_nb_run(st, 1.0, seed, people=len(st.labels), plan_people=EXPECTED_PEOPLE).auc_serve)
        clear.append(joint_nb_run(st, float("inf"), seed, people=len(st.labels)).auc_serve)
        assert st.spec.positive is not None
        attr, value = st.spec.positive
        j = [a.name for a in st.spec.attributes].index(attr)
        known.append(auc(st.holdout[1], (st.holdout[0][:, j] == value).astype(float)))  # purchase events first
    print("demo", demo, "default", default, "clear", clear, "known value only", known)
    assert statistics.fmean(demo) >= 0.55, demo  # measured 0.587, 0.568, 0.670
    # measured 0.581, 0.622, 0.579 against 0.543-0.545 from the known value alone (0.5, 0.5, 0.5 before it)
    assert statistics.fmean(default) >= statistics.fmean(known) + 0.02, (default, known)
    assert statistics.fmean(demo) >= statistics.fmean(known) + 0.02, (demo, known)
    assert statistics.fmean(clear) >= 0.65, clear  # measured 0.644-0.706
