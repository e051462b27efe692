"""``streamgate estimates``: records under other mechanism parameters than the local policy's
(e.g. `streamgate demo`'s epsilon 4) are counted and explained, never dropped in silence."""

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
from tests.cli.test_cli_ldp import _env


def _records(epsilon: float, start_ms: int, source: str) -> list[dict]:
    """One window's device record of a privatizer running at ``epsilon``, 1,000 people."""
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), epsilon)
    dev = policy.by_name["device"]
    assert dev.oracle is not None
    rng = np.random.default_rng(1)
    reports = dev.oracle.perturb(rng.choice(dev.k, size=1000), rng)
    agg = WindowAggregator(policy, window_seconds=60)
    agg.add([AttributeReport(start_ms + i, "device", r, i) for i, r in enumerate(reports)])
    return [rec for w in agg.drain() for rec in agg.records(w, source=source)]


@pytest.mark.integration
def test_estimates_names_the_records_it_cannot_merge_and_the_setting_that_reads_them(settings_factory) -> None:
    settings = settings_factory()
    ensure_topics(settings.kafka_bootstrap, [settings.topics.frequencies], partitions=1)
    start = (int(time.time() * 1000) // 60_000 - 5) * 60_000
    demo = _records(4.0, start, "demo/0")  # the demo's privatizer: eps=2 per report
    assert demo and demo[0]["eps"] == 2.0
    publish(settings.kafka_bootstrap, settings.topics.frequencies, [orjson.dumps(r) for r in demo] + [b"junk"])
    env = {**_env(settings), "STREAMGATE_LDP_EPSILON": "1"}
    for args in (["estimates", "--total"], ["estimates", "--total", "--json"], ["estimates"]):
        result = CliRunner().invoke(cli, [*args, "--idle-timeout", "1"], prog_name="streamgate", env=env)
        assert result.exit_code == 3, (args, result.output)
        assert "{" not in result.stdout and "desktop" not in result.stdout
        assert ("skipped 1 record(s) of attribute device: written with eps=2; this policy's: eps=0.5 "
                "(STREAMGATE_LDP_EPSILON=1); set STREAMGATE_LDP_EPSILON=4 to read them") in result.stderr, args
        assert f"skipped 1 record(s) of {settings.topics.frequencies}: not an estimate record" in result.stderr
        assert "every estimate record read was skipped" in result.stderr
    # the setting it names reads them
    ok = CliRunner().invoke(cli, ["estimates", "--total", "--json", "--idle-timeout", "1"], prog_name="streamgate",
                            env={**env, "STREAMGATE_LDP_EPSILON": "4"})
    assert ok.exit_code == 0, ok.output
    (line,) = ok.stdout.splitlines()
    assert orjson.loads(line)["n"] == 1000 and "attribute device" not in ok.stderr
    # records of both: the readable ones are shown (exit 0), the others still counted
    local = _records(1.0, start + 60_000, "local/0")
    publish(settings.kafka_bootstrap, settings.topics.frequencies, [orjson.dumps(r) for r in local])
    mixed = CliRunner().invoke(cli, ["estimates", "--total", "--json", "--idle-timeout", "1"], prog_name="streamgate",
                               env=env)
    assert mixed.exit_code == 0, mixed.output
    (line,) = mixed.stdout.splitlines()
    assert orjson.loads(line)["n"] == 1000 and orjson.loads(line)["eps"] == 0.5
    assert "skipped 1 record(s) of attribute device: written with eps=2" in mixed.stderr


def test_skipped_lines_name_other_causes() -> None:
    from stream.commands.ldp import skipped_lines
    from stream.config import Settings

    schema = load_schema("clickstream-event.v1")
    policy = LdpPolicy.from_schema(schema, 1.0)
    rec = _records(1.0, 0, "s/0")[0]
    assert skipped_lines(Settings(ldp_epsilon=1.0), schema, policy, [rec]) == []
    unknown = {**rec, "attribute": "shoe_size"}
    other_k = {**rec, "k": rec["k"] + 1, "support": [*rec["support"], 0]}
    lines = skipped_lines(Settings(ldp_epsilon=1.0), schema, policy, [unknown, other_k, other_k])
    assert lines[0] == ("skipped 1 record(s) of attribute shoe_size: schema clickstream-event.v1 "
                        "(STREAMGATE_SCHEMA_NAME) has no ldp attribute shoe_size")
    assert lines[1].startswith(f"skipped 2 record(s) of attribute device: written with k={rec['k'] + 1}; "
                               f"this policy's: k={rec['k']}")
    assert lines[1].endswith("no STREAMGATE_LDP_EPSILON reads them (another schema version or x-privacy wrote them)")
