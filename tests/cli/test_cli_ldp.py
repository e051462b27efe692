"""``streamgate privatizer --explain`` and ``streamgate estimates`` (against the real broker)."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from stream.apps.produce import publish
from stream.cli import cli
from stream.kafka import ensure_topics
from stream.ldp.aggregate import WindowAggregator
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import AttributeReport
from stream.schema import load_schema


def _env(settings) -> dict[str, str]:
    t = settings.topics
    return {
        "STREAMGATE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "STREAMGATE_REDIS_URL": settings.redis_url,
        "STREAMGATE_TOPICS": t.model_dump_json(),
        "STREAMGATE_STATE_DIR": str(settings.state_dir),
    }


def test_privatizer_explain_shows_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGATE_LDP_EPSILON", "0.5")
    result = CliRunner().invoke(cli, ["privatizer", "--explain"], prog_name="streamgate")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("attribute=category") and "mechanism=OUE" in line and "eps=0.25" in line
               for line in lines)
    assert any(line.startswith("attribute=price") and "mechanism=Duchi" in line and "hi=5000.0" in line
               for line in lines)
    assert "per person per epoch: at most epsilon 12" in result.output


@pytest.mark.integration
def test_estimates_merges_windows_and_workers(settings_factory) -> None:
    settings = settings_factory(ldp_epsilon=1.0)
    ensure_topics(settings.kafka_bootstrap, [settings.topics.frequencies], partitions=2)
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0)
    dev = policy.by_name["device"]
    assert dev.oracle is not None
    rng = np.random.default_rng(0)
    truth = rng.choice(dev.k, size=6000, p=[0.5, 0.3, 0.1, 0.05, 0.05])
    reports = dev.oracle.perturb(truth, rng)
    now_ms = int(time.time() * 1000)
    recs = []
    for worker, part in (("w1", slice(0, 3000)), ("w2", slice(3000, 6000))):
        agg = WindowAggregator(policy, window_seconds=60)
        agg.add([AttributeReport(now_ms - 120_000 + i * 10, "device", r, i + part.start)
                 for i, r in enumerate(reports[part])])
        recs += [rec for w in agg.drain() for rec in agg.records(w, worker=worker)]
    publish(settings.kafka_bootstrap, settings.topics.frequencies, [orjson.dumps(r) for r in recs])
    result = CliRunner().invoke(cli, ["estimates", "--total", "--json", "--idle-timeout", "2"],
                                prog_name="streamgate", env=_env(settings))
    assert result.exit_code == 0, result.output
    (line,) = [json_line for json_line in result.output.splitlines() if json_line.startswith("{")]
    merged = orjson.loads(line)
    assert merged["attribute"] == "device" and merged["n"] == 6000
    est = {v["value"]: v for v in merged["values"]}
    assert abs(est["desktop"]["estimate"] - 0.5) < 5 * est["desktop"]["std_error"]
    # the table form renders the same numbers
    table = CliRunner().invoke(cli, ["estimates", "--total", "--idle-timeout", "2"], prog_name="streamgate",
                               env=_env(settings))
    assert table.exit_code == 0 and "device" in table.output and "desktop" in table.output


@pytest.mark.integration
def test_estimates_with_nothing_published_says_so(settings_factory) -> None:
    settings = settings_factory()
    ensure_topics(settings.kafka_bootstrap, [settings.topics.frequencies], partitions=1)
    result = CliRunner().invoke(cli, ["estimates", "--idle-timeout", "1"], prog_name="streamgate",
                                env=_env(settings))
    assert result.exit_code == 3
    assert "no estimates yet" in result.output


@pytest.mark.integration
def test_estimates_before_the_privatizer_ever_ran_names_it(settings_factory) -> None:
    settings = settings_factory()  # a fresh topic name: never created
    result = CliRunner().invoke(cli, ["estimates", "--idle-timeout", "1"], prog_name="streamgate",
                                env=_env(settings))
    assert result.exit_code == 1
    assert "TopicMissingError" in result.output and settings.topics.frequencies in result.output
    assert "created by the privatizer" in result.output and "streamgate privatizer" in result.output


def test_estimates_table_shows_the_projected_value_first_and_labels_the_unbiased_one() -> None:
    from rich.console import Console

    from stream.commands.ldp import ESTIMATES_NOTE, render_estimates

    window = {"start": "2030-01-01T00:00:00Z", "end": "2030-01-01T00:01:00Z", "start_ms": 0, "end_ms": 60_000}
    rec = {"attribute": "category", "kind": "categorical", "mechanism": "L-OSUE", "eps_inf": 2.0, "n": 900,
           "window": window, "values": [
               {"value": "jewelry", "estimate": 1.0947, "std_error": 0.05, "projected": 0.9},
               {"value": "books", "estimate": -0.0412, "std_error": 0.05, "projected": 0.1}]}
    num = {"attribute": "price", "kind": "numeric", "mechanism": "L-Duchi", "eps_inf": 2.0, "n": 900,
           "window": window, "mean": -12.5, "clipped_mean": 0.0, "std_error": 40.0, "ci95": [-90.9, 65.9]}
    console = Console(record=True, width=200)
    console.print(render_estimates([rec, num], truth={"category": {"jewelry": 0.88, "books": 0.12}}))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "value" in line and "unbiased" in line)
    assert header.index("estimate") < header.index("true") < header.index("unbiased")
    row = next(line for line in text.splitlines() if "jewelry" in line)
    assert row.index("0.9000") < row.index("0.8800") < row.index("1.0947")
    price = next(line for line in text.splitlines() if "-12.50" in line)
    assert price.index("0.00") < price.index("-12.50")
    assert " ".join(ESTIMATES_NOTE.split()[:6]) in " ".join(text.split())
