"""``privatizer --explain``: every number it states is computed from the policy and checked here
against an independent computation from the mechanisms' exact laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from stream.cli import cli
from stream.config import Settings
from stream.ldp.longitudinal import LongitudinalDuchi, LongitudinalGRR, LongitudinalOUE
from stream.ldp.policy import LdpPolicy, privacy_account
from stream.schema import load_schema


def _exact_eps_1(mech: object) -> float:
    """The per-report epsilon from the composite law of one report."""
    if isinstance(mech, LongitudinalGRR):
        p, q = mech.composite()
        return math.log(p / q)
    if isinstance(mech, LongitudinalOUE):  # two inputs differ in two bits
        p, q = mech.composite()
        return math.log(p * (1 - q) / ((1 - p) * q))
    assert isinstance(mech, LongitudinalDuchi)
    hi = mech.p2 * (0.5 + mech.s1) + (1 - mech.p2) * (0.5 - mech.s1)
    return math.log(hi / (1 - hi))


def test_the_account_of_the_default_schema() -> None:
    s = Settings()
    policy = LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)
    acc = privacy_account(policy, person_epsilon=s.ldp_person_epsilon, epoch_seconds=s.epoch_seconds,
                          retention_seconds=s.retention_seconds, label_epsilon=s.learn_label_epsilon)
    exact = {a.name: _exact_eps_1(a.longitudinal) for a in policy.attributes}
    for name, eps in exact.items():
        assert acc.per_report[name] == pytest.approx(eps)
    label = LongitudinalGRR(2, s.learn_label_epsilon, acc.per_report["session_purchase"])
    assert acc.per_report["session_purchase"] == pytest.approx(_exact_eps_1(label))
    assert acc.per_event == pytest.approx(sum(exact.values())) == pytest.approx(2.5)
    assert acc.per_example == pytest.approx(3.0)
    assert acc.first_event_cost == pytest.approx(6.0)  # 5 attributes + the label, eps_inf 1 each
    assert acc.person_epoch == s.ldp_person_epsilon == 12.0
    # a 30-day retention after each 1-day epoch: 31 epochs' reports may be held at once
    assert acc.epochs_held == 31 and acc.retention_bound == pytest.approx(12.0 * 31)
    # the memo's law: eps_inf exactly (checked for GRR: the ratio of the permanent law)
    dev = policy.by_name["device"].longitudinal
    assert isinstance(dev, LongitudinalGRR) and math.log(dev.p1 / dev.q1) == pytest.approx(acc.per_memo["device"])
    assert np.isclose(dev.p1 + (dev.k - 1) * dev.q1, 1.0)


def test_explain_prints_the_account(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["privatizer", "--explain"], prog_name="streamgate")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "per report: epsilon event_type 0.5, category 0.5, price 0.5, device 0.5, country 0.5, " \
           "session_purchase 0.5" in out
    assert "per event: epsilon 2.5" in out and "3 for a labelled example" in out
    assert "per person per epoch: at most epsilon 12 " in out and "a first event charges 6" in out
    assert "over the retention window: at most epsilon 372 = 12 x 31 epochs" in out
    assert "never their ledger" in out and "an observer of features.private cannot" in out
    assert "under the same budget" not in out
    monkeypatch.setenv("STREAMGATE_LDP_PERSON_EPSILON", "4")
    monkeypatch.setenv("STREAMGATE_LDP_EPSILON", "0.5")
    out = CliRunner().invoke(cli, ["privatizer", "--explain"], prog_name="streamgate").output
    assert "per event: epsilon 1.25" in out and "at most epsilon 124 = 4 x 31" in out


@pytest.mark.parametrize("name", ["STREAMGATE_LDP_SEED", "streamgate_ldp_seed"])
def test_the_worker_command_refuses_a_seed(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    result = CliRunner().invoke(cli, ["privatizer"], prog_name="streamgate")
    assert result.exit_code != 0 and f"{name} is no longer a setting" in result.output
    assert "for tests and benchmarks only" in result.output
