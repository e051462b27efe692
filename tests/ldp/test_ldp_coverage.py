"""Estimates cover the truth they name (issue 20): through the production privatizer and aggregator, the
95 % intervals of every mechanism of the default schema cover the truth of their estimand - each person's
first c events of the epoch, computed from the clear stream alone - in at least 90 % of cases, under light
and heavy repeaters. ``streamgate bench ldp --coverage`` runs the full size (500 windows per profile)."""

from __future__ import annotations

import pytest

from stream.bench.ldp import (
    capped_population,
    coverage_stream,
    coverage_table,
    production_pair,
    production_per_person,
)


@pytest.fixture(scope="module")
def rows() -> list:
    return coverage_table(production_pair, windows=150, events_per_window=1000, per_person=production_per_person,
                          seed=11, say=lambda s: None)


@pytest.mark.parametrize("profile", ["light", "heavy"])
@pytest.mark.parametrize("mechanism", ["GRR", "OUE", "Duchi"])
def test_intervals_cover_the_named_truth(rows: list, mechanism: str, profile: str) -> None:
    (row,) = [r for r in rows if r.mechanism == mechanism and r.profile == profile]
    assert row.windows == 150 and row.intervals >= 150
    assert row.coverage >= 0.90 and row.top_coverage >= 0.90, row
    assert 0.75 < row.mean_z2 < 1.3, row  # the std errors are the real spread, not just wide
    assert abs(row.mean_z) < 0.25, row  # unbiased: a bias of half a std error shows here


def test_the_estimand_differs_from_every_event_under_heavy_repeaters() -> None:
    """The capped population is a different population when people repeat (so naming it matters): heavy
    repeaters lose most of their events to the cap of 4, light ones none."""
    heavy = coverage_stream("heavy", 5, 1000, 1, 0)
    light = coverage_stream("light", 5, 1000, 1, 0)
    assert len(capped_population(heavy, 4, 60)) < 0.6 * len(heavy)
    assert len(capped_population(light, 4, 60)) == len(light)
