"""The mutation check of the privacy core (issue 27): every mutant of :mod:`stream.bench.mutants` is killed
by the LDP tests. Minutes long: the slow job runs it."""

from __future__ import annotations

import pytest

from stream.bench.mutants import MUTANTS, REPO, run_mutants

pytestmark = pytest.mark.slow


def test_every_mutant_is_found_once_in_the_source() -> None:
    for m in MUTANTS:
        assert (REPO / m.path).read_text().count(m.old) == 1, m.name


def test_the_suite_kills_every_privacy_mutant() -> None:
    rows = run_mutants(say=lambda s: None)
    survivors = [m.name for m, killed, _k, _s in rows if not killed]
    assert not survivors, survivors
