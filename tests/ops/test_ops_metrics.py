"""The metrics endpoint of a real ``streamgate gateway`` worker (a subprocess started here, real
broker, real Redis): every declared series is exposed, the series move when events flow, the
snapshots reach ``ops.metrics``, readiness follows the dependencies, every alert rule and every
dashboard query names a series the worker exports, and no plaintext PII or token ever appears in
the worker's logs, its metric labels or its snapshots."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream.dev.stack import free_port
from stream.ops.logging import ALLOWED_EXTRA
from stream.ops.metrics import SERIES
from stream.synth import ClickstreamGenerator
from tests.support.gateway_worker import (
    GatewayWorker,
    gateway_worker,
    http_get,
    json_lines,
    scrape,
    wait_fresh_snapshot,
)
from tests.support.kafka import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
N_VALID = 400
PII_FIELDS = ("user_id", "session_id", "email", "phone", "ip", "user_agent", "shipping_address", "referrer")


# --------------------------------------------------------------------------- helpers
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """(family names, {(sample name, labels): value}) of a Prometheus text exposition."""
    families: set[str] = set()
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        families.add(fam.name)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    want = frozenset({"worker": "gateway", **labels}.items())
    return samples.get((name, want), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name and label in dict(k)}


def wait_samples(w: GatewayWorker, predicate: Any, what: str, timeout: float = 90.0) -> Samples:
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        _, samples = parse(scrape(w))
        if predicate(samples):
            return samples
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; worker log:\n{w.tail()}")


def _invalid_lines(events: list[dict[str, Any]], uid: str) -> list[tuple[str, bytes]]:
    unknown = dict(events[5], event_id=str(uuid.uuid4()), secret_note=f"unknown.field.{uid}@example.org")
    missing = dict(events[6], event_id=str(uuid.uuid4()), email=f"missing.page.{uid}@example.org")
    missing.pop("page")
    return [
        ("not_json", f"not json: call leaky.person.{uid}@example.net".encode()),
        ("not_json", f"{{broken json usr_leak{uid}".encode()),
        ("unknown_field", orjson.dumps(unknown)),
        ("not_object", orjson.dumps([{"email": f"array.{uid}@example.org", "user_id": f"usr_arr{uid}"}])),
        ("missing_field", orjson.dumps(missing)),
    ]


@dataclass
class Flow:
    w: GatewayWorker
    before: str
    after: str
    total: int
    invalid: list[tuple[str, bytes]]
    secrets: list[str]


@pytest.fixture(scope="module")
def flow(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    state_dir = tmp_path_factory.mktemp("ops-metrics")
    uid = uuid.uuid4().hex[:8]
    events = list(ClickstreamGenerator(seed=23).events(N_VALID))
    invalid = _invalid_lines(events, uid)
    lines = [orjson.dumps(e) for e in events]
    for i, (_, raw) in enumerate(invalid):
        lines.insert(30 + 60 * i, raw)
    path = state_dir / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    secrets = [f"{uid}@example", f"usr_arr{uid}", f"usr_leak{uid}"]
    secrets += sorted({e[f] for e in events for f in PII_FIELDS if isinstance(e.get(f), str) and len(e[f]) >= 6})
    with gateway_worker(kafka_bootstrap, redis_url, state_dir) as w:
        before = scrape(w)
        r = w.run("produce", "--file", str(path), "--allow-invalid")
        assert r.returncode == 0, r.stderr
        total = len(lines)
        wait_samples(w, lambda s: value(s, "streamgate_events_in_total") >= total
                     and value(s, "streamgate_events_out_total", topic="protected") >= N_VALID
                     and value(s, "streamgate_events_out_total", topic="dlq") >= len(invalid), "every event counted")
        wait_fresh_snapshot(w, total)  # a snapshot published after the events were counted
        after = scrape(w)
        yield Flow(w, before, after, total, invalid, secrets)


# --------------------------------------------------------------------------- tests
def test_metrics_endpoint_exposes_every_declared_series(flow: Flow) -> None:
    status, body, ctype = http_get(flow.w.url("/metrics"))
    assert status == 200
    assert ctype.startswith("text/plain; version=")  # the Prometheus text exposition format
    families, samples = parse(body.decode())
    declared = {s.name.removesuffix("_total") if s.type == "counter" else s.name for s in SERIES}
    assert declared <= families, sorted(declared - families)
    assert {f for f in families if f.startswith("streamgate_")} == declared  # and nothing undeclared
    assert all(dict(labels).get("worker") == "gateway" for (_, labels) in samples)
    assert value(samples, "streamgate_worker_info", version=__import__("stream").__version__) == 1
    for spec in SERIES:  # the documented label names are the ones exposed
        for (name, labels) in samples:
            if name.startswith(spec.name) and name.removeprefix(spec.name) in ("", "_bucket", "_sum", "_count"):
                assert set(dict(labels)) - {"le"} == set(spec.labels), (name, labels)


def test_series_move_when_events_flow(flow: Flow) -> None:
    _, before = parse(flow.before)
    _, after = parse(flow.after)
    n_invalid = len(flow.invalid)
    assert value(before, "streamgate_events_in_total") == 0
    assert value(before, "streamgate_batch_duration_seconds_count") == 0
    assert value(after, "streamgate_events_in_total") == flow.total
    assert value(after, "streamgate_events_out_total", topic="protected") == N_VALID
    assert value(after, "streamgate_events_out_total", topic="dlq") == n_invalid
    assert by_label(after, "streamgate_dead_letters_total", "reason") == dict(Counter(r for r, _ in flow.invalid))
    batches = value(after, "streamgate_batch_duration_seconds_count")
    assert batches >= 1
    assert value(after, "streamgate_batch_duration_seconds_bucket", le="+Inf") == batches
    assert value(after, "streamgate_batch_duration_seconds_sum") > 0
    assert value(after, "streamgate_event_duration_seconds_count") == flow.total  # weighted by events
    assert value(after, "streamgate_dek_keys_created_total") > 0
    assert value(after, "streamgate_dek_cache_misses_total") > 0
    assert value(after, "streamgate_redis_errors_total") == 0
    assert value(after, "streamgate_ready") == 1  # /readyz was asked by the fixture
    assert by_label(after, "streamgate_dependency_up", "dependency") == {"broker": 1, "redis": 1, "kek": 1}
    # lag: one gauge per assigned partition of the raw topic, caught up once everything was consumed
    lag = wait_samples(flow.w, lambda s: by_label(s, "streamgate_consumer_lag", "partition")
                       and sum(by_label(s, "streamgate_consumer_lag", "partition").values()) == 0, "lag 0")
    assert set(by_label(lag, "streamgate_consumer_lag", "partition")) == {"0", "1"}


def test_snapshots_reach_the_metrics_topic(flow: Flow) -> None:
    # (the worker publishes every second, so the topic never goes idle: read for a bounded time)
    recs = read_topic(flow.w.bootstrap, flow.w.topics.metrics, idle=1.0, timeout=8)
    assert recs, "no snapshot on the metrics topic"
    assert {r.key for r in recs} == {b"gateway"}
    snaps = [orjson.loads(r.value) for r in recs]
    latest = max(snaps, key=lambda s: s["ts"])
    assert latest["worker"] == "gateway" and isinstance(latest["pid"], int) and latest["host"]
    assert latest["events_in"] == flow.total
    assert latest["events_out"] == {"protected": N_VALID, "dlq": len(flow.invalid)}
    assert latest["dlq"] == dict(Counter(r for r, _ in flow.invalid))
    assert latest["lag_total"] >= 0 and latest["ready"] is True
    assert set(latest["rates"]) == {"in", "out", "dlq"}
    assert any(s["rates"]["in"] > 0 for s in snaps)  # some snapshot window saw the events arrive


def test_healthz_and_readyz(flow: Flow) -> None:
    status, body, _ = http_get(flow.w.url("/healthz"))
    assert status == 200
    health = json.loads(body)
    assert health["ok"] is True and health["gateway"]["consumed"] == flow.total
    status, body, _ = http_get(flow.w.url("/readyz"))
    assert (status, json.loads(body)) == (200, {"ready": True})


def test_alert_rules_and_dashboard_name_series_the_worker_exports(flow: Flow) -> None:
    families, samples = parse(flow.after)
    exported = {name for name, _ in samples} | families | {f"{f}_total" for f in families}
    exprs: list[str] = []
    for rule_file in sorted((REPO / "ops" / "rules").glob("*.yml")):
        doc = yaml.safe_load(rule_file.read_text())
        exprs += [r["expr"] for g in doc["groups"] for r in g["rules"]]
    dash_dir = REPO / "ops" / "grafana" / "dashboards"
    for dash in sorted(dash_dir.glob("*.json")):
        for panel in json.loads(dash.read_text())["panels"]:
            exprs += [t["expr"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    names = {n for e in exprs for n in re.findall(r"\bstreamgate_[a-z0-9_]+", e)}
    assert names
    missing = sorted(n for n in names if n not in exported)
    assert not missing, f"alert rules / dashboard queries name series no worker exports: {missing}"


def test_no_pii_or_tokens_in_logs_labels_or_snapshots(flow: Flow) -> None:
    protected = read_topic(flow.w.bootstrap, flow.w.topics.protected, expect=N_VALID, timeout=60)
    assert len(protected) == N_VALID
    tokens = {r.key.decode() for r in protected if r.key}
    for r in protected:  # every token of every tokenized field (user, session, ...)
        tokens.update(re.findall(r"tk\d+_[A-Za-z0-9_-]+", r.value.decode()))
    assert len(tokens) > 10
    log_text = flow.w.log.read_text(errors="replace")
    snapshots = b"\n".join(r.value or b"" for r in read_topic(flow.w.bootstrap, flow.w.topics.metrics, idle=1.0, timeout=8))
    haystacks = {"log": log_text, "metrics": flow.before + flow.after, "snapshots": snapshots.decode()}
    for where, text in haystacks.items():
        leaked = [s for s in flow.secrets if s in text]
        assert not leaked, f"{len(leaked)} plaintext values in the worker's {where}"
        leaked_tokens = [t for t in tokens if t in text]
        assert not leaked_tokens, f"{len(leaked_tokens)} tokens in the worker's {where}"
        assert not re.search(r"tk\d+_", text), where
    # JSON logs: one object per line, only the allow-listed fields
    records = json_lines(log_text)
    assert records, flow.w.tail()
    assert any(r.get("msg") == "gateway started" for r in records)
    allowed = {"ts", "level", "logger", "msg", "exc"} | ALLOWED_EXTRA
    assert all(set(r) <= allowed for r in records), [sorted(set(r) - allowed) for r in records if set(r) - allowed]


def test_readyz_names_an_unreachable_redis(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Ready needs Redis: a worker whose Redis is down is alive (fails closed, retries) but not ready."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with gateway_worker(kafka_bootstrap, dead_redis, tmp_path, wait_ready=False) as w:
        deadline = time.monotonic() + 90
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, raw, _ = http_get(w.url("/readyz"), timeout=10)
            body = json.loads(raw)
            if status == 503 and body.get("checks", {}).get("gateway"):  # holds partitions, still not ready
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"readyz never reported the partitions held: {body}\n{w.tail()}")
        assert body == {"ready": False, "checks": {"alive": True, "gateway": True, "broker": True, "redis": False,
                                                    "kek": True}, "reason": "redis unreachable (ConnectionError)"}
        status, raw, _ = http_get(w.url("/healthz"))
        assert status == 200 and json.loads(raw)["ok"] is True
        _, samples = parse(scrape(w))
        assert value(samples, "streamgate_ready") == 0
        assert by_label(samples, "streamgate_dependency_up", "dependency") == {"broker": 1, "redis": 0, "kek": 1}
