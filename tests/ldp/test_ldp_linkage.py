"""Linkage: can feature reports be grouped into persons by their contents? (issue 12)

One stream is privatized twice, on a real Redis: (a) 300 people, each with one fixed tuple of
ldp values and 20 events; (b) the same tuples event for event, each event from a new person.
If a person's reports shared anything that others' do not (a memoized report, a hash seed, a
rounded number), (a) would have far fewer distinct reports than (b). With fresh per-report noise
the counts agree: the test asks (a) >= 0.9 x (b). On the one-round memoized reports it replaced,
(a) had one distinct report per person: 300 against ~6,000.
"""

from __future__ import annotations

import time

import orjson
import pytest

from stream.crypto.keyring import Keyring
from stream.ldp.memo import RedisMemoStore
from stream.ldp.privatizer import ProtectedRecord
from stream.redisdb import RedisClient
from stream.synth import ClickstreamGenerator
from tests.support.ldp import make_privatizer, protect

pytestmark = pytest.mark.integration

PEOPLE, EVENTS_EACH = 300, 20


def _streams() -> tuple[list[dict], list[dict]]:
    template = list(ClickstreamGenerator(seed=21, n_users=PEOPLE).events(PEOPLE * EVENTS_EACH))
    tuples = []
    for i in range(PEOPLE):
        src = template[i * 7 % len(template)]
        tuples.append({f: src.get(f) for f in ("event_type", "category", "price", "device", "country")})
    same, fresh = [], []
    for j, ev in enumerate(template):
        person = j % PEOPLE
        ldp = tuples[person]
        for out, uid in ((same, f"person-{person}"), (fresh, f"newcomer-{j}")):
            e = {k: v for k, v in ev.items() if k not in ldp}
            e.update({k: v for k, v in ldp.items() if v is not None})
            e["user_id"] = uid
            out.append(e)
    return same, fresh


def _distinct_reports(events: list[dict], client: RedisClient, prefix: str, keyring: Keyring) -> int:
    now_ms = int(time.time() * 1000)
    records = [ProtectedRecord(v, now_ms) for _k, v in protect(events, keyring)]
    priv = make_privatizer(store=RedisMemoStore(client, prefix=prefix), budget=50.0, seed=3)
    reports = []
    for i in range(0, len(records), 1000):
        res = priv.process(records[i : i + 1000])
        assert not res.suppressed
        reports += res.reports
    assert len(reports) == len(events)
    return len({orjson.dumps(orjson.loads(r)["features"], option=orjson.OPT_SORT_KEYS) for r in reports})


def test_a_persons_reports_are_as_diverse_as_strangers(redis_client: RedisClient, redis_prefix: str) -> None:
    keyring = Keyring.generate()
    same, fresh = _streams()
    a = _distinct_reports(same, redis_client, redis_prefix + "a", keyring)
    b = _distinct_reports(fresh, redis_client, redis_prefix + "b", keyring)
    print(f"distinct reports: (a) one person per tuple {a}, (b) a new person per event {b}, ratio {a / b:.3f}")
    assert a >= 0.9 * b, (a, b)
