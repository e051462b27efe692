"""WorkerMetrics without a worker: label allow-lists (no token or value can become a label),
the exposition, the snapshot, several registries in one process."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.ops.metrics import SERIES, WorkerMetrics, exposed_names
from stream.schema import Reason


def _samples(m: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_declared_series_is_exposed_even_without_samples() -> None:
    m = WorkerMetrics("shredder")
    text = generate_latest(m.registry).decode()
    for s in SERIES:
        assert f"# TYPE {s.name} {s.type}\n" in text
    assert "streamgate_keys_shredded_total" in exposed_names()
    assert "streamgate_batch_duration_seconds_bucket" in exposed_names()


def test_counts_move_and_snapshot_agrees() -> None:
    m = WorkerMetrics("privatizer")
    m.events_in(10)
    m.events_out("features", 8)
    m.dead_lettered(Reason.NOT_JSON, 2)
    m.observe_batch(0.02, 10)
    m.set_lag(3, 42)
    m.set_dek_cache(5, 6, 7)
    m.redis_error()
    m.ldp_reports("device", "OUE", 8, 4.0)
    m.ldp_suppressed("device", 2)
    m.set_model_metric("conversion", "auc", 0.71)
    s = _samples(m)
    w = ("worker", "privatizer")
    assert s[("streamgate_events_in_total", (w,))] == 10
    assert s[("streamgate_events_out_total", (("topic", "features"), w))] == 8
    assert s[("streamgate_dead_letters_total", (("reason", "not_json"), w))] == 2
    assert s[("streamgate_consumer_lag", (("partition", "3"), w))] == 42
    assert s[("streamgate_dek_cache_misses_total", (w,))] == 6
    assert s[("streamgate_ldp_reports_total", (("attribute", "device"), ("mechanism", "oue"), w))] == 8
    assert s[("streamgate_ldp_epsilon_spent_total", (("attribute", "device"), w))] == 4.0
    assert s[("streamgate_model_metric", (("metric", "auc"), ("model", "conversion"), w))] == 0.71
    assert s[("streamgate_event_duration_seconds_count", (w,))] == 10
    assert s[("streamgate_batch_duration_seconds_count", (w,))] == 1
    snap = m.snapshot()
    assert snap["worker"] == "privatizer" and snap["events_in"] == 10 and snap["lag_total"] == 42
    assert snap["ldp"] == {"device": {"reports": 8, "epsilon_spent": 4.0, "suppressed": 2, "mechanism": "oue"}}
    assert snap["models"] == {"conversion": {"auc": 0.71}} and snap["rates"] == {"in": 0.0, "out": 0.0, "dlq": 0.0}
    m.events_in(5)
    assert m.snapshot()["rates"]["in"] > 0  # rate since the previous snapshot
    m.clear_lag(keep=[])
    assert m.snapshot()["lag"] == {}


@pytest.mark.parametrize("call", [
    lambda m: m.events_out("clicks.protected.custom", 1),          # topic: logical names only
    lambda m: m.dead_lettered("because", 1),                      # reason: Reason values only
    lambda m: m.keys_shredded("tk1_abcdef", 1),                   # shred reason: retention | erasure
    lambda m: m.ldp_reports("tk1_abc", "grr", 1, 1.0),            # attribute: a schema field name
    lambda m: m.ldp_reports("alice@example.org", "grr", 1, 1.0),
    lambda m: m.ldp_suppressed("usr_6a8bcfb0331f842a"),
    lambda m: m.ldp_reports("device", "tk1_abc", 1, 1.0),        # mechanism: pattern, no tokens
    lambda m: m.set_model_metric("Alice Smith", "auc", 1.0),      # model: pattern
    lambda m: m.set_model_metric("ctr", "a" * 65, 1.0),
    lambda m: m.set_model_metric("tk1_x", "auc", 1.0),
    lambda m: m.set_lag(-1, 5),
    lambda m: m.events_in(-3),
    lambda m: m.set_ready(True, {"postgres": True}),
])
def test_label_values_outside_the_allow_lists_are_refused(call) -> None:  # type: ignore[no-untyped-def]
    m = WorkerMetrics("gateway")
    with pytest.raises(ValueError) as exc:
        call(m)
    for leaked in ("tk1_", "alice", "usr_6a8b", "Alice"):
        assert leaked not in str(exc.value)  # the message never echoes the value
    assert all("tk1_" not in name + str(labels) for name, labels in _samples(m))


def test_free_labels_are_capped() -> None:
    m = WorkerMetrics("privatizer")
    for i in range(32):
        m.set_model_metric(f"model{i}", "auc", 0.5)
    with pytest.raises(ValueError, match="too many distinct values"):
        m.set_model_metric("model32", "auc", 0.5)


def test_worker_names_and_registries() -> None:
    with pytest.raises(ValueError):
        WorkerMetrics("db")
    reg = CollectorRegistry()
    a = WorkerMetrics("gateway", reg)
    b = WorkerMetrics("gateway")  # its own registry: several workers in one process
    a.events_in(1)
    assert a.registry is reg and b.registry is not reg
    assert _samples(b)[("streamgate_events_in_total", (("worker", "gateway"),))] == 0
    with pytest.raises(ValueError):  # the same series twice in one registry
        WorkerMetrics("gateway", reg)


def test_person_epsilon_histogram_is_numbers_only() -> None:
    m = WorkerMetrics("privatizer")
    assert "ldp_person_epsilon" not in m.snapshot()
    m.set_person_epsilon({"epoch": 3, "cap": 12.0, "bin_width": 1.0, "counts": [0, 2, 1], "people": 3, "untracked": 0})
    assert m.snapshot()["ldp_person_epsilon"] == {"epoch": 3, "cap": 12.0, "bin_width": 1.0, "counts": [0, 2, 1],
                                                  "people": 3, "untracked": 0}
    with pytest.raises(ValueError):
        m.set_person_epsilon({"counts": ["tk1_abc"]})
