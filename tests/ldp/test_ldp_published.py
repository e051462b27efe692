"""Nothing exact per person on the published topics (issue 20): the engine's outputs to
analytics.partials and analytics.frequencies, and its metrics, tested with the issue's one-person example.

One person's 6 events with one category against the same 6 events with six categories: on the memoized
design the partial-window increments were [1,1,1,1,0,0] against [1,1,1,1,1,1] (one memo per new value) and
the ε histogram put them in bin 5 against bin 10. Here a report costs the same whatever its values, every
published count is the same in both worlds, and a batch of one person's events writes no partial record.
The engine's process/tick/finish are called directly (no broker: the outputs are what it would produce).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from stream.apps.privatizer import PrivatizerEngine
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.engine import Record
from tests.support.ldp import make_privatizer, protect

CATS = ["books", "music", "toys", "shoes", "garden", "sports"]


def _event(i: int, user: str, category: str) -> dict:
    return {"event_id": f"00000000-0000-4000-8000-{i:012d}", "event_type": "product_view",
            "ts": "2024-01-03T10:15:00Z", "user_id": user, "session_id": f"s-{user}", "page": "/p/1",
            "category": category, "device": "mobile", "country": "DE", "price": 19.5}


def _published(one_category: bool, keyring: Keyring) -> tuple[list[tuple[str, Any]], PrivatizerEngine]:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", learn_examples=False)
    engine = PrivatizerEngine(settings, make_privatizer(budget=12.0, seed=1), bootstrap="127.0.0.1:9")
    background = [_event(100 + i, f"bg-{i // 3}", "books") for i in range(60)]  # 20 people, 3 events each
    alice = [_event(i, "alice", "books" if one_category else CATS[i]) for i in range(6)]
    now_ms = int(time.time() * 1000)
    values = [v for _k, v in protect(background + alice, keyring)]
    batches = [values[:60], values[60:]]  # the last batch holds alice's events only
    outs = []
    offset = 0
    for batch in batches:
        recs = [Record("clicks.protected", 0, offset + i, v, now_ms) for i, v in enumerate(batch)]
        offset += len(batch)
        outs += engine.process(recs).outputs
    fin = engine.finish()
    outs += fin.outputs if fin is not None else []
    counts: list[tuple[str, Any]] = []
    for o in outs:
        if o.topic == settings.topics.partials:
            doc = orjson.loads(o.value or b"")
            counts.append(("partial", [(w["people"], sorted((k, a["n"]) for k, a in w["accs"].items()))
                                       for w in doc["state"]["windows"]]))
        elif o.topic == settings.topics.frequencies:
            rec = orjson.loads(o.value or b"")
            counts.append(("estimate", (rec["attribute"], rec["n"])))
        elif o.topic == settings.topics.features:
            counts.append(("features", 1))
    return counts, engine


def test_one_persons_values_change_no_published_count() -> None:
    keyring = Keyring.generate()
    one, e1 = _published(True, keyring)
    six, e6 = _published(False, keyring)
    assert one == six  # every partial, estimate and report count is the same in both worlds
    assert ("estimate", ("category", 64)) in one  # 60 background reports + alice's 4 (cap 12 / 2.5)
    assert sum(1 for kind, _ in one if kind == "features") == 64
    assert e1.stats.over_budget == e6.stats.over_budget == 2
    # the ε histogram is not published within the epoch (and only noised after it)
    assert e1.privatizer.spend.published() is None


def test_a_batch_of_one_person_writes_no_partial_record() -> None:
    keyring = Keyring.generate()
    settings = Settings(kafka_bootstrap="127.0.0.1:9", learn_examples=False)
    engine = PrivatizerEngine(settings, make_privatizer(budget=12.0, seed=1), bootstrap="127.0.0.1:9")
    now_ms = int(time.time() * 1000)
    many = [v for _k, v in protect([_event(i, f"p{i}", "books") for i in range(12)], keyring)]
    alice = [v for _k, v in protect([_event(50 + i, "alice", CATS[i]) for i in range(6)], keyring)]
    out1 = engine.process([Record("t", 0, i, v, now_ms) for i, v in enumerate(many)]).outputs
    assert [o for o in out1 if o.topic == settings.topics.partials]  # 12 people: written
    assert [o for o in out1 if o.topic == settings.topics.features]  # and released at once
    out2 = engine.process([Record("t", 0, 12 + i, v, now_ms) for i, v in enumerate(alice)]).outputs
    assert not [o for o in out2 if o.topic == settings.topics.partials]  # alice alone: nothing written
    assert not [o for o in out2 if o.topic == settings.topics.features]  # held for more people
    assert len(engine.release) == 4
