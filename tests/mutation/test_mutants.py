"""The mutation check of the privacy core (issue 27): every mutant of :mod:`stream.bench.mutants` is killed
by the LDP test named beside it (docs/testing.md's table), and those tests pass on the unmutated copy.

Each mutant runs in its own copy of the tree with only its killer (``run_mutants(tests=...)``), so the
mutants spread over the xdist workers; ``python -m stream.bench.mutants`` still runs all the LDP tests
against each. Slow job."""

from __future__ import annotations

import pytest

from stream.bench.mutants import MUTANTS, REPO, Mutant, run_mutants

pytestmark = pytest.mark.slow

_PRIV = "tests/ldp/test_ldp_privatizer.py::"
_AGG = "tests/ldp/test_ldp_aggregate.py::"

#: mutant name -> the suite's test that must fail on it (the docs' "killed by" column)
KILLERS = {
    "shared noise: equal values share one draw (across reports and people)":
        _PRIV + "test_every_report_draws_fresh_noise_and_is_charged",
    "no shuffle of a batch's reports": _PRIV + "test_report_order_does_not_follow_the_input_order",
    "no shuffle of a release": "tests/ldp/test_ldp_release.py::test_release_order_does_not_follow_the_input_order",
    "over-spending: a report is released even past the cap":
        _PRIV + "test_the_person_cap_spans_attributes_and_past_it_nothing_is_released",
    "over-spending: the ledger checks the cap before the charge":
        _PRIV + "test_the_person_cap_spans_attributes_and_past_it_nothing_is_released",
    "biased estimator: frequencies 5 % high": _AGG + "test_a_noise_free_support_gives_back_the_truth_exactly",
    "biased estimator: numeric mean off by half its std error":
        "tests/ldp/test_ldp_coverage.py::test_intervals_cover_the_named_truth[Duchi-light]",
    "error bars 30 % too narrow": "tests/ldp/test_ldp_coverage.py::test_intervals_cover_the_named_truth[GRR-light]",
    "a window of one person is published": _AGG + "test_a_window_of_too_few_people_is_withheld",
    "partials written for every batch": "tests/ldp/test_ldp_published.py::test_a_batch_of_one_person_writes_no_partial_record",
    "the ε histogram is published exact":
        "tests/ldp/test_ldp_spend.py::test_only_a_noised_histogram_of_a_finished_epoch_is_published",
    "the ε histogram's noise 2x weaker (sensitivity 1, not 2)":
        "tests/ldp/test_ldp_spend.py::test_published_noise_follows_the_two_sided_geometric_law_of_epsilon_1",
    "one attribute memoized per person: price reuses one response per (person, value)":
        "tests/ldp/test_ldp_linkage.py::test_a_persons_reports_cannot_be_grouped_in_process[12.0]",
    "a window's source names the process: one published again after a crash counts twice":
        "tests/apps/test_privatizer_republish.py::test_a_window_published_again_after_a_crash_is_counted_once",
    "after a restore, people who report again are counted twice":
        _AGG + "test_people_who_report_again_after_a_restore_are_not_counted_twice",
}


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The copies run one test or a few: in one process (no xdist workers of their own)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-n 0")


def test_every_mutant_is_found_once_in_the_source_and_names_its_killer() -> None:
    for m in MUTANTS:
        assert (REPO / m.path).read_text().count(m.old) == 1, m.name
    assert sorted(KILLERS) == sorted(m.name for m in MUTANTS)


def test_the_killers_pass_on_the_unmutated_copy() -> None:
    """The baseline: a no-op "mutant" (its text replaced by itself) survives every killer."""
    m = MUTANTS[0]
    ((_m, killed, killer, _s),) = run_mutants([Mutant("none", m.path, m.old, m.old)], tests=sorted(set(KILLERS.values())),
                                              say=lambda s: None)
    assert not killed, killer


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_named_test_kills_the_mutant(mutant: Mutant) -> None:
    want = KILLERS[mutant.name]
    ((_m, killed, killer, _s),) = run_mutants([mutant], tests=[want], say=lambda s: None)
    # killed by a failing assertion of that very test (not an error in setup, not "no tests ran")
    assert killed and killer == want, f"{mutant.name}: killed={killed} first failure={killer!r}, want {want}"
