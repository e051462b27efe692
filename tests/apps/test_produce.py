"""``LineCheck``: raw lines checked as the gateway will check them, before they are sent."""

from __future__ import annotations

import orjson

from stream.apps.produce import LineCheck
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator


def test_line_check_counts_invalid_lines_by_reason_and_where() -> None:
    check = LineCheck(load_schema("clickstream-event.v1"), max_event_bytes=2048)
    good = [orjson.dumps(e) for e in ClickstreamGenerator(seed=3).events(5)]
    lines = [good[0], b"# streamgate", good[1], b"[1, 2]", b'{"x": ' + b"1" * 3000 + b"}", good[2],
             orjson.dumps({**orjson.loads(good[3]), "extra": 1})]
    verdicts = [check(line) for line in lines]
    assert verdicts == [True, False, True, False, False, True, False]
    assert check.lines == 7 and check.first_invalid == [2, 4, 5, 7]
    assert dict(check.invalid) == {"not_json": 1, "not_object": 1, "too_large": 1, "unknown_field": 1}
    assert check.summary().startswith("4 of 7 lines are not valid clickstream-event.v1 events")
    assert "first at line 2, 4, 5, 7" in check.summary()


def test_line_check_agrees_with_the_gateway_on_big_numbers_and_connect_envelopes() -> None:
    check = LineCheck(load_schema("clickstream-event.v1"), max_event_bytes=4096)
    ev = next(iter(ClickstreamGenerator(seed=4).events(1)))
    huge = orjson.dumps(ev)[:-1] + b',"price":1e400}'
    envelope = orjson.dumps({"schema": {"type": "struct"}, "payload": ev})
    bad_envelope = orjson.dumps({"schema": {"type": "struct"}, "payload": {**ev, "quantity": -1}})
    assert [check.reason(x) for x in (huge, envelope, bad_envelope)] == [
        "number_out_of_range", None, "schema_violation"]
