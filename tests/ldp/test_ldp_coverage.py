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
    # the top value alone, where a bias shows first (150 windows: 2.5 std errors of its mean z). A truth over
    # another population than the estimate's (a device value the schema refuses, so never reported) gave
    # +0.25 and +0.29 for GRR here, and +0.15 for Duchi
    assert abs(row.top_mean_z) < 0.2, row


@pytest.fixture(scope="module")
def merged_rows() -> list:
    return coverage_table(production_pair, windows=240, events_per_window=500, per_person=production_per_person,
                          seed=12, merge_windows=3, say=lambda s: None)


@pytest.mark.parametrize("profile", ["light", "heavy"])
@pytest.mark.parametrize("mechanism", ["GRR", "OUE", "Duchi"])
def test_merged_windows_cover_the_truth_of_their_union(merged_rows: list, mechanism: str, profile: str) -> None:
    """What ``streamgate estimates --total`` and the console's merged view publish: three windows' records
    merged (supports and sums added, the std error at the merged n), against the union's truth."""
    (row,) = [r for r in merged_rows if r.mechanism == mechanism and r.profile == profile]
    assert row.windows == 80 and row.intervals >= 80
    assert row.coverage >= 0.90, row
    # Duchi's std error is an upper bound (docs/benchmarks.md): its intervals may be wide, never narrow
    assert (0.5 if mechanism == "Duchi" else 0.7) < row.mean_z2 < 1.35, row
    # 80 merged intervals per row: 0.2 is 1.8 std errors of the mean z, 0.3 is 2.7
    assert abs(row.mean_z) < (0.3 if mechanism == "Duchi" else 0.2), row


@pytest.fixture(scope="module")
def daily_rows() -> list:
    """The production shape: an epoch (the cap's period) of ten windows, and people who come back."""
    return coverage_table(production_pair, windows=200, events_per_window=500, per_person=production_per_person,
                          seed=13, epoch_windows=10, pool=500, say=lambda s: None)


@pytest.mark.parametrize("profile", ["light", "heavy"])
@pytest.mark.parametrize("mechanism", ["GRR", "OUE", "Duchi"])
def test_windows_within_a_longer_epoch_cover_their_truth(daily_rows: list, mechanism: str, profile: str) -> None:
    """A window's population is its events within each person's first c of the epoch, which earlier windows
    use up: later windows hold fewer of a returning person's events (mean n ~ 1/5 - 2/5 of the events here)."""
    (row,) = [r for r in daily_rows if r.mechanism == mechanism and r.profile == profile]
    assert row.windows == 200 and row.mean_n < 0.45 * 500, row  # the cap binds across windows
    assert row.coverage >= 0.90 and row.top_coverage >= 0.90, row
    assert 0.75 < row.mean_z2 < 1.3, row
    # against every event (not the capped population) the top value's mean z was -0.51 (OUE) and -0.37 (GRR)
    # for heavy repeaters here; 200 windows: 0.25 is 3.5 std errors of it
    assert abs(row.mean_z) < 0.25 and abs(row.top_mean_z) < 0.25, row


def test_the_truth_refuses_values_outside_the_schema() -> None:
    """A value no gateway passes is never reported (and its event costs less): a truth counting it would name
    another population than the estimate's, so the harness refuses it instead of reporting a bias."""
    from stream.bench.ldp import _truth_by_window
    from stream.ldp.policy import LdpPolicy
    from stream.schema import load_schema

    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0)
    ok = {"user_id": "u", "event_type": "page_view", "device": "mobile", "country": "DE"}
    assert _truth_by_window(policy, [(0, ok)], 60_000)[0]["_n"] == 1
    with pytest.raises(ValueError, match="device='tv' is outside the schema"):
        _truth_by_window(policy, [(0, ok), (1, {**ok, "device": "tv"})], 60_000)


def test_the_coverage_stream_stays_inside_the_schema() -> None:
    from stream.ldp.policy import LdpPolicy
    from stream.schema import load_schema

    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0)
    events = (coverage_stream("heavy", 3, 1000, 1, 0) + coverage_stream("light", 3, 1000, 1, 0)
              + coverage_stream("heavy", 3, 1000, 1, 0, pool=200))
    for a in policy.attributes:
        if a.kind == "categorical":
            assert all(a.index_of(ev.get(a.name)) is not None for _, ev in events), a.name
    assert {ev["device"] for _, ev in events} == {"desktop", "mobile", "tablet", "other"}


def test_the_estimand_differs_from_every_event_under_heavy_repeaters() -> None:
    """The capped population is a different population when people repeat (so naming it matters): heavy
    repeaters lose most of their events to the cap of 4, light ones none."""
    heavy = coverage_stream("heavy", 5, 1000, 1, 0)
    light = coverage_stream("light", 5, 1000, 1, 0)
    assert len(capped_population(heavy, 4, 60)) < 0.6 * len(heavy)
    assert len(capped_population(light, 4, 60)) == len(light)
