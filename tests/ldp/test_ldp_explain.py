"""``privatizer --explain``: every number it states is computed from the policy and checked here
against an independent computation from the mechanisms' exact laws."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from stream.cli import cli
from stream.config import Settings
from stream.ldp.policy import LdpPolicy, privacy_account
from stream.schema import load_schema


def _exact_eps(attr: object) -> float:
    """The per-report epsilon from the exact law of one report (one round: GRR, OUE or Duchi)."""
    from stream.ldp import GRR, OUE, DuchiMechanism

    mech = getattr(attr, "oracle", None) or getattr(attr, "numeric", None)
    if isinstance(mech, GRR):
        return math.log(mech.p / mech.q)
    if isinstance(mech, OUE):  # two inputs differ in two bits
        return math.log(mech.p * (1 - mech.q) / ((1 - mech.p) * mech.q))
    assert isinstance(mech, DuchiMechanism)
    hi = float(mech.prob_plus(1.0))
    return math.log(hi / (1 - hi))


def test_the_account_of_the_default_schema() -> None:
    from stream.ldp import GRR
    from stream.ldp.privatizer import reports_per_person

    s = Settings()
    policy = LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)
    acc = privacy_account(policy, person_epsilon=s.ldp_person_epsilon, epoch_seconds=s.epoch_seconds,
                          retention_seconds=s.retention_seconds, label_epsilon=s.learn_label_epsilon)
    exact = {a.name: _exact_eps(a) for a in policy.attributes}
    for name, eps in exact.items():
        assert acc.per_report[name] == pytest.approx(eps)
    label = GRR(2, acc.per_report["session_purchase"])
    assert acc.per_report["session_purchase"] == pytest.approx(math.log(label.p / label.q))
    assert acc.per_event == pytest.approx(sum(exact.values())) == pytest.approx(2.5)
    assert acc.per_example == pytest.approx(3.0)
    assert acc.person_epoch == s.ldp_person_epsilon == 12.0
    assert reports_per_person(policy, 12.0, s.learn_label_epsilon) == 4  # 12 / 3
    assert reports_per_person(policy, 12.0) == 4  # 12 / 2.5
    # a 30-day retention after each 1-day epoch: 31 epochs' reports may be held at once
    assert acc.epochs_held == 31 and acc.retention_bound == pytest.approx(12.0 * 31)


def test_explain_prints_the_account(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["privatizer", "--explain"], prog_name="streamgate")
    assert result.exit_code == 0, result.output
    out = result.output
    # the default: joint-nb examples, one per person-epoch at 1.0, paid before the feature reports
    assert "per report: epsilon event_type 0.5, category 0.5, price 0.5, device 0.5, country 0.5 -" in out
    assert "per event: epsilon 2.5 (a feature report: its 5 attributes)\n" in out
    assert "per person per epoch: at most epsilon 12 " in out
    assert "first the person-epoch's joint-nb example (1, at their first event), then at most 4 reports per person " \
           "per epoch at 2.5 each" in out
    assert "labelled examples: joint-nb" in out and "kept in this process only, never in a store" in out
    assert "cannot be tied to a feature report by content" in out
    logistic = CliRunner().invoke(cli, ["privatizer", "--explain"], prog_name="streamgate",
                                  env={"STREAMGATE_LEARN_MODEL": "logistic"}).output
    assert "per report: epsilon event_type 0.5, category 0.5, price 0.5, device 0.5, country 0.5, " \
           "session_purchase 0.5" in logistic
    assert "per event: epsilon 2.5" in logistic and "3 with its labelled example's label" in logistic
    assert "at most 4 reports per person per epoch at 3 each" in logistic
    assert "tie a labelled example to the feature report of the same event" in logistic
    assert "over the retention window: at most epsilon 372 = 12 x 31 epochs" in out
    assert "never refunds" in out and "an observer of features.private cannot" in out
    assert "unbiased for each person's first 4 events" in out and "no stand-in" in out
    assert "memo" not in out.replace("no memo", "")
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
