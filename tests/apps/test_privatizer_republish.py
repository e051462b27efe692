"""A window published twice for one input partition is counted once by its readers.

The privatizer writes a closed window's estimate records and the partition's partial-window record in
one batch. A crash after the estimates were delivered but before the partial was (nothing committed)
makes the restarted process restore the older partial, replay the batch, close the window again and
publish it again under its own ``worker`` (a new pid). ``streamgate estimates``, the demo and the
console must read that as one window, not two. The engine's process is called directly, as the broker
would drive it (see tests/ldp/test_ldp_published.py); the crash drops the partial record.
"""

from __future__ import annotations

import time

import orjson

from stream.apps.privatizer import PrivatizerEngine
from stream.config import Settings
from stream.console.state import ConsoleState
from stream.crypto.keyring import Keyring
from stream.engine import Out, Record
from stream.ldp.aggregate import latest_per_source, merge_records
from stream.ldp.ledger import MemoryLedgerStore
from tests.support.ldp import make_privatizer, protect

PEOPLE = 30
WINDOW_MS = 60_000


def _event(i: int, user: str) -> dict:
    return {"event_id": f"00000000-0000-4000-8000-{i:012d}", "event_type": "product_view",
            "ts": "2024-01-03T10:15:00Z", "user_id": user, "session_id": f"s-{user}", "page": "/p/1",
            "category": "books", "device": "mobile", "country": "DE", "price": 19.5}


def _engine(settings: Settings, store: MemoryLedgerStore, worker_id: str) -> PrivatizerEngine:
    engine = PrivatizerEngine(settings, make_privatizer(budget=12.0, seed=len(worker_id), store=store),
                              bootstrap="127.0.0.1:9")
    engine.worker_id = worker_id  # the restarted process has another pid
    return engine


def test_a_window_published_again_after_a_crash_is_counted_once() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", learn_examples=False, ldp_window_seconds=WINDOW_MS / 1000)
    t = settings.topics
    keyring = Keyring.generate()
    store = MemoryLedgerStore()
    start = (int(time.time() * 1000) // WINDOW_MS - 60) * WINDOW_MS  # a window an hour ago
    values = [v for _k, v in protect([_event(i, f"p{i}") for i in range(PEOPLE + 1)], keyring)]
    batch_a = [Record(t.protected, 0, i, v, start + 1_000) for i, v in enumerate(values[:PEOPLE])]
    # one event ten minutes later: its watermark closes the window
    batch_b = [Record(t.protected, 0, PEOPLE, values[PEOPLE], start + 600_000)]

    first = _engine(settings, store, "host-1")
    out_a = first.process(batch_a).outputs
    (partial_a,) = [o for o in out_a if o.topic == t.partials]  # delivered
    out_b = first.process(batch_b).outputs
    published: list[Out] = [o for o in out_b if o.topic == t.frequencies]
    assert published and [o for o in out_b if o.topic == t.partials]  # the crash drops this partial

    second = _engine(settings, store, "host-2")
    second.restore((t.protected, 0), orjson.loads(partial_a.value or b""))
    out = second.process(batch_a).outputs + second.process(batch_b).outputs  # replayed: nothing committed
    published += [o for o in out if o.topic == t.frequencies]

    recs = [orjson.loads(o.value or b"") for o in published]
    attrs = {r["attribute"] for r in recs}
    assert len(recs) == 2 * len(attrs)  # the window, twice: each attribute once per process
    assert {r["worker"] for r in recs} == {"host-1/p0", "host-2/p0"}
    policy = first.privatizer.policy
    want = {r["attribute"]: r["n"] for r in recs if r["worker"] == "host-1/p0"}
    assert want["category"] == PEOPLE
    # what `streamgate estimates` and the demo add up
    assert {r["attribute"]: r["n"] for r in merge_records(policy, latest_per_source(recs))} == want
    # and the console
    console = ConsoleState(policy, since_ms=0)
    for r in recs:
        console.add_frequency(r)
    view = console.view(time.time())["estimates"]["attributes"]
    assert {a["name"]: a["merged"]["n"] for a in view} == want


def test_after_a_graceful_stop_the_window_it_published_is_closed_for_the_next_owner() -> None:
    """A graceful stop publishes the open windows as they are and writes them closed in its partial;
    the next owner restores that, so the rest of such a window's records are late (counted, not
    estimated) and the window is never published a second time for that partition, which readers
    would otherwise have to add rather than replace."""
    settings = Settings(kafka_bootstrap="127.0.0.1:9", learn_examples=False, ldp_window_seconds=WINDOW_MS / 1000)
    t = settings.topics
    keyring = Keyring.generate()
    store = MemoryLedgerStore()
    start = (int(time.time() * 1000) // WINDOW_MS - 60) * WINDOW_MS
    values = [v for _k, v in protect([_event(i, f"p{i}") for i in range(2 * PEOPLE + 1)], keyring)]
    recs = [Record(t.protected, 0, i, v, start + 1_000 + i) for i, v in enumerate(values[:2 * PEOPLE])]
    closer = Record(t.protected, 0, 2 * PEOPLE, values[2 * PEOPLE], start + 600_000)

    first = _engine(settings, store, "host-1")
    first.process(recs[:PEOPLE])
    fin = first.finish()
    assert fin is not None
    published = [o for o in fin.outputs if o.topic == t.frequencies]
    (partial,) = [o for o in fin.outputs if o.topic == t.partials]
    assert published

    second = _engine(settings, store, "host-2")
    second.restore((t.protected, 0), orjson.loads(partial.value or b""))
    out = second.process(recs[PEOPLE:]).outputs + second.process([closer]).outputs
    fin2 = second.finish()
    out += fin2.outputs if fin2 is not None else []
    again = [orjson.loads(o.value or b"") for o in out if o.topic == t.frequencies]
    assert not [r for r in again if r["window"]["start_ms"] == start]
    assert second.stats.late == PEOPLE * len({r["attribute"] for r in map(orjson.loads, (o.value for o in published))})
