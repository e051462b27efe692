"""The console against the real broker: it is assigned the derived topics only (never clicks.raw or
clicks.protected, though they exist and hold records), folds what they carry, and serves it over
HTTP only to who holds the token and names a loopback host."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from stream.apps.learner import fresh_model, snapshot_key
from stream.apps.produce import publish
from stream.config import Settings
from stream.console import ConsoleService, console_topics
from stream.console.server import COOKIE
from stream.crypto.keyring import Keyring
from stream.crypto.signing import signing_key
from stream.kafka import ensure_topics
from stream.ldp.aggregate import estimate_record
from stream.ldp.policy import LdpPolicy
from stream.learn.snapshot import ModelSnapshot
from stream.ops.metrics import WorkerMetrics
from stream.ops.worker import snapshot_record
from stream.retention.receipts import erasure_receipt, sign_receipt
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator
from tests.support.kafka import wait_for

pytestmark = pytest.mark.integration

TOKEN = "console-test-token"


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
    return conn.getresponse()


def _derived_records(s: Settings) -> dict[str, list[Any]]:
    keyring = Keyring.from_settings(s)
    m = WorkerMetrics("gateway")
    m.events_in(120)
    m.events_out("protected", 117)
    m.events_out("dlq", 3)
    m.dead_lettered_many({"not_json": 2, "empty": 1})
    policy = LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)
    attr = policy.by_name["device"]
    estimate = estimate_record(attr, n=90, support=[40, 30, 10, 5, 5], total=None, start_ms=1_800_000_000_000,
                               end_ms=1_800_000_060_000, worker="w")
    receipt = sign_receipt(erasure_receipt(subject="tk1_someone", request_id="req-console", at=1_800_000_070.0,
                                           worker="w", keys_shredded=2), signing_key(keyring, "receipt"))
    snap = ModelSnapshot.capture(fresh_model(s), metrics={"roc_auc": 0.61, "log_loss": 0.66}, label_epsilon=1.0,
                                 feature_epsilon={}).to_bytes(snapshot_key(s, keyring))
    return {s.topics.metrics: [snapshot_record(m, "gateway")], s.topics.frequencies: [estimate],
            s.topics.audit: [receipt], s.topics.snapshots: [snap]}


def test_console_reads_only_the_derived_topics_and_serves_them(settings_factory: Callable[..., Settings],
                                                                kafka_bootstrap: str) -> None:
    s = settings_factory()
    t = s.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected], partitions=2)
    ensure_topics(kafka_bootstrap, console_topics(t), partitions=1)
    events = list(ClickstreamGenerator(seed=1).events(20))
    publish(kafka_bootstrap, t.raw, events)
    publish(kafka_bootstrap, t.protected, [orjson.dumps(e) for e in events])
    for topic, items in _derived_records(s).items():
        publish(kafka_bootstrap, topic, items)

    with ConsoleService(s, port=0, token=TOKEN) as console:
        wait_for(lambda: sum(console.state.records.values()) >= 4, timeout=60, what="the console to read 4 records")
        assert console.reader.assigned == sorted(console_topics(t))
        port = console.port

        # the state: what the records say
        view = console.view()
        assert view["reading"]["topics"] == sorted(console_topics(t))
        assert (view["pipeline"]["events_in"], view["pipeline"]["protected"], view["pipeline"]["dead_lettered"]) == (
            120, 117, 3)
        (receipt,) = view["privacy"]["receipts"]
        assert (receipt["request_id"], receipt["keys_shredded"], receipt["verified"]) == ("req-console", 2, True)
        (model,) = view["model"]["models"]
        assert model["versions"][0]["verified"] is True and model["versions"][0]["roc_auc"] == 0.61
        assert view["estimates"]["attributes"][0]["merged"]["n"] == 90
        text = orjson.dumps(view)
        for e in events:  # nothing of the raw or protected events reaches the console
            assert e["event_id"].encode() not in text and e["user_id"].encode() not in text

        # HTTP: the token once, then the cookie; the bearer header; loopback names only
        r = _get(port, "/")
        assert r.status == 401 and b"token" in r.read()
        r = _get(port, f"/?token={TOKEN}")
        assert r.status == 303 and r.getheader("Location") == "/"
        cookie = (r.getheader("Set-Cookie") or "").split(";")[0]
        assert cookie.startswith(COOKIE + "=") and TOKEN not in cookie
        assert "HttpOnly" in (r.getheader("Set-Cookie") or "")
        r = _get(port, "/", {"Cookie": cookie})
        body = r.read()
        assert r.status == 200 and b"/static/console.js" in body
        assert "script-src 'self'" in (r.getheader("Content-Security-Policy") or "")
        assert r.getheader("X-Frame-Options") == "DENY"
        r = _get(port, "/static/console.js", {"Cookie": cookie})
        assert r.status == 200 and r.getheader("Content-Type", "").startswith("text/javascript") and r.read()
        assert _get(port, "/static/../service.py", {"Cookie": cookie}).status == 404
        r = _get(port, "/api/state", {"Authorization": f"Bearer {TOKEN}"})
        state = orjson.loads(r.read())
        assert r.status == 200 and state["pipeline"]["events_in"] == 120
        assert _get(port, "/api/state", {"Authorization": "Bearer wrong"}).status == 401
        assert _get(port, "/api/state", {"Cookie": cookie, "Host": f"rebound.example:{port}"}).status == 421

        # server-sent events: the current state first
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/events", headers={"Host": f"127.0.0.1:{port}", "Cookie": cookie})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
        line = r.fp.readline()
        assert line.startswith(b"data: ")
        assert orjson.loads(line[6:])["version"] == console.state.version
        conn.close()
    # asked of the client itself once its thread stopped: the derived topics, never raw or protected
    assigned = set(console.reader.assigned)
    assert assigned == set(console_topics(t)) and not assigned & {t.raw, t.protected}
