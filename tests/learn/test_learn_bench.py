"""``streamgate bench learn`` at a tiny size: the exact AUC, the runs' structure and the command's
output (the real figures come from the command itself)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from click.testing import CliRunner

from stream.bench.learn import (
    MODELS,
    auc,
    format_table,
    mean_log_loss,
    phishing_run,
    summarize,
    synthetic_run,
    target_check,
)
from stream.cli import cli


def _pairwise_auc(y: list[bool], p: list[float]) -> float:
    pos = [pi for yi, pi in zip(y, p, strict=True) if yi]
    neg = [pi for yi, pi in zip(y, p, strict=True) if not yi]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_is_the_mann_whitney_statistic_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = list(rng.random(60) < 0.3)
        p = list(np.round(rng.random(60), 1))  # many ties
        assert auc(y, p) == pytest.approx(_pairwise_auc(y, p), abs=1e-12)
    assert auc([True, False], [0.9, 0.1]) == 1.0 and auc([True, False], [0.1, 0.9]) == 0.0
    assert math.isnan(auc([True, True], [0.1, 0.2]))
    assert mean_log_loss([True, False], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_synthetic_run_small() -> None:
    """The per-event models (``STREAMGATE_LEARN_MODEL=logistic``) at a cap that reports every event:
    the runs' structure. They do not learn under one-round noise (served AUC 0.40-0.46 here): the
    learning claim is joint-nb's (tests/test_demo.py, test_bench_learn_people_tiny)."""
    runs = synthetic_run(4.0, 1, events=6000, holdout=1500, n_users=800, budget=1e6)
    assert [r.model for r in runs] == list(MODELS)
    for r in runs:
        assert r.dataset == "synthetic" and r.epsilon == 4.0 and r.seed == 1
        assert 5000 < r.examples <= 6000  # every reported event became one labelled example
        assert 0.05 < r.positive_share < 0.6
        for v in (r.auc_private, r.logloss_private, r.auc_clean, r.logloss_clean):
            assert math.isfinite(v)
        assert 0.0 <= r.auc_clean <= 1.0
    serve = {r.model: r.auc_serve for r in runs}
    assert math.isnan(serve["raw-features"])  # raw indicators cannot be served on clear values
    assert 0.0 <= serve["corrected"] <= 1.0 and 0.0 <= serve["uncorrected"] <= 1.0


def test_phishing_and_the_summary_table() -> None:
    runs = phishing_run(math.inf, 1) + phishing_run(math.inf, 2) + phishing_run(2.0, 1) + phishing_run(2.0, 2)
    assert {r.examples for r in runs} == {1250}
    rows = summarize(runs)
    assert [(r.epsilon, r.model) for r in rows] == [(2.0, "corrected"), (2.0, "uncorrected"),
                                                     (math.inf, "corrected"), (math.inf, "uncorrected")]
    nonprivate = next(r for r in rows if math.isinf(r.epsilon) and r.model == "corrected")
    assert nonprivate.metrics["auc_clean"][0] > 0.9  # the public dataset's sanity check
    text = format_table(rows)
    assert "phishing" in text and "±" in text and text.count("\n") == len(rows) + 1
    got = target_check(rows, dataset="phishing")
    assert got is not None and got[1] == nonprivate.metrics["auc_clean"][0]


def test_bench_learn_command_tiny() -> None:
    res = CliRunner().invoke(cli, ["bench", "learn", "--events", "3000", "--holdout", "600", "--seeds", "1",
                                   "--epsilons", "4,inf", "--datasets", "synthetic", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "synthetic     4 corrected" in res.output and "inf corrected" in res.output
    assert "auc_serve at eps 2" not in res.output  # eps 2 was not run: no comparison claimed
    bad = CliRunner().invoke(cli, ["bench", "learn", "--epsilons", "2,x"])
    assert bad.exit_code == 2 and "not a number" in bad.output


def test_bench_learn_people_tiny() -> None:
    """--people: both default candidates on one stream per seed, the ledger never past its cap, the table."""
    from stream.bench.learn import format_people, people_table

    runs = people_table(people=(1500,), epsilons=(4.0, math.inf), seeds=(1,), workers=1, phishing=True)
    synth = [r for r in runs if r.dataset == "synthetic"]
    # joint-uniform's clear learner is joint-nb's (the draw only matters under privacy)
    assert {(r.model, r.epsilon) for r in synth} == {("joint-nb", 4.0), ("joint-nb", math.inf), ("joint-uniform", 4.0)}
    assert all(r.examples == 1500 for r in synth)  # one example per person (one epoch)
    assert all(r.charged_max <= r.epsilon for r in runs if math.isfinite(r.epsilon))
    clear = next(r for r in synth if r.model == "joint-nb" and math.isinf(r.epsilon))
    assert clear.auc_serve > 0.62  # naive Bayes on 1,500 clear examples
    phish = {(r.model, r.epsilon): r.auc_serve for r in runs if r.dataset == "phishing"}
    assert phish[("joint-nb", math.inf)] > 0.9
    text = format_people(runs)
    assert "joint-nb" in text and "joint-uniform" in text and "phishing" in text


def test_bench_learn_people_command() -> None:
    res = CliRunner().invoke(cli, ["bench", "learn", "--people", "800", "--seeds", "1", "--epsilons", "2,inf",
                                   "--workers", "1", "--datasets", "synthetic"])
    assert res.exit_code == 0, res.output
    assert "joint-nb" in res.output and "gap eps 2" in res.output and "largest ledger after any run: 2" in res.output
    bad = CliRunner().invoke(cli, ["bench", "learn", "--people", "10"])
    assert bad.exit_code == 2
