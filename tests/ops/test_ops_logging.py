"""Allow-listed structured logging: no raw event, value or token can reach a log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from stream.errors import KeyUnavailableError
from stream.ops.logging import ALLOWED_EXTRA, SafeRecordFilter, configure_logging, safe_value

EVENT = {"user_id": "usr_6a8bcfb0331f842a", "email": "alice@example.org", "page": "/home"}


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    handler = configure_logging("json", "debug")
    out = io.StringIO()
    handler.setStream(out)  # type: ignore[attr-defined]
    try:
        yield logging.getLogger("streamgate.test"), out
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_only_allowed_fields(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = capture
    log.info("gateway started", extra={"raw": "clicks.raw", "guarantee": "at_least_once", "event": EVENT,
                                       "user_id": EVENT["user_id"], "reasons": {"not_json": 2}})
    (rec,) = _lines(out)
    assert rec["msg"] == "gateway started" and rec["level"] == "info" and rec["logger"] == "streamgate.test"
    assert rec["raw"] == "clicks.raw" and rec["guarantee"] == "at_least_once" and rec["reasons"] == {"not_json": 2}
    assert "event" not in rec and "user_id" not in rec  # not allow-listed: dropped
    assert set(rec) <= {"ts", "level", "logger", "msg"} | ALLOWED_EXTRA


def test_a_raw_event_never_reaches_the_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = capture
    raw = json.dumps(EVENT)
    log.warning("got %s and %s", EVENT, raw.encode())       # containers / bytes as % arguments
    log.warning("dict style %(email)s", EVENT)                # a mapping argument
    log.warning("as a string %s", raw)                        # a JSON string argument (quotes, braces)
    log.warning("allowed key, event value", extra={"error": raw, "reasons": EVENT, "partitions": [EVENT],
                                                   "count": b"bytes"})
    text = out.getvalue()
    for value in EVENT.values():
        if value != "/home":
            assert value not in text
    recs = _lines(out)
    assert recs[0]["msg"] == "got <redacted:dict> and <redacted:bytes>"
    assert "<redacted:mapping arguments>" in str(recs[1]["msg"])
    assert recs[2]["msg"] == "as a string <redacted:str>"
    assert recs[3]["error"] == "<redacted:str>" and recs[3]["reasons"] == "<redacted:dict>"
    assert recs[3]["partitions"] == ["<redacted:dict>"] and recs[3]["count"] == "<redacted:bytes>"


def test_exception_messages_of_third_parties_are_withheld(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = capture
    try:
        raise ValueError(f"'{EVENT['email']}' is not of type 'integer'")  # e.g. a jsonschema message
    except ValueError:
        log.exception("validation crashed")
    try:
        raise KeyUnavailableError("key store unreachable (ConnectionError)")
    except KeyUnavailableError:
        log.exception("fail closed")
    text = out.getvalue()
    assert EVENT["email"] not in text
    first, second = _lines(out)
    assert "ValueError (message withheld)" in str(first["exc"]) and "test_ops_logging.py" in str(first["exc"])
    assert "KeyUnavailableError: key store unreachable (ConnectionError)" in str(second["exc"])


def test_text_format_and_levels() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        handler = configure_logging("text", "warn")
        out = io.StringIO()
        handler.setStream(out)  # type: ignore[attr-defined]
        log = logging.getLogger("streamgate.test")
        log.info("hidden")
        log.warning("partitions assigned", extra={"partitions": [0, 1], "secret": "x"})
        line = out.getvalue().strip()
        assert line.endswith("WARNING streamgate.test partitions assigned partitions=[0,1]"), line
        assert root.level == logging.WARNING
        configure_logging("json", "crit")
        assert root.level == logging.CRITICAL
        with pytest.raises(ValueError):
            configure_logging("xml", "info")
        with pytest.raises(ValueError):
            configure_logging("json", "loud")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_filter_is_idempotent_and_never_drops() -> None:
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "m %s", ([EVENT],), None)
    rec.__dict__["user_id"] = EVENT["user_id"]
    f = SafeRecordFilter()
    assert f.filter(rec) and f.filter(rec)
    assert rec.getMessage() == "m <redacted:list>"
    assert "user_id" not in rec.__dict__


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3), (1.5, 1.5), (None, None), (True, True), ("clicks.raw", "clicks.raw"),
    ("a@b.example", "<redacted:str>"), ('{"k": 1}', "<redacted:str>"), ("x" * 201, "<redacted:long str>"),
    ([1, "two"], [1, "two"]), ({"not_json": 1}, {"not_json": 1}), ({"email": "a"}, "<redacted:dict>"),
    ([[1]], ["<redacted:list>"]), (b"raw", "<redacted:bytes>"), ("tk1_AbC-9_x", "<redacted:token>"),
    ("key of tk1_AbC", "<redacted:token>"), ("t[1]@3", "<redacted:str>"),
])
def test_safe_value(value: object, expected: object) -> None:
    assert safe_value(value) == expected


def test_every_extra_field_the_code_logs_is_allowed() -> None:
    """A field missing from the allow-list is dropped from every line without a word (the key store's
    reset reason and count, the engine's retries and recoveries were): each ``extra=`` key and each
    keyword of a rate-limited log call in stream/ is allow-listed."""
    import pathlib
    import re

    import stream

    used: dict[str, str] = {}
    for path in pathlib.Path(stream.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"extra=\{([^}]*)\}", text):
            used.update((k, path.name) for k in re.findall(r'"([a-z_0-9]+)"\s*:', m.group(1)))
        for m in re.finditer(r"_rlog\((.*?)\)\n", text, re.S):
            used.update((k, path.name) for k in re.findall(r"\b([a-z_0-9]+)=", m.group(1)))
    assert len(used) > 25  # the scan found the code's log calls
    assert {k: f for k, f in used.items() if k not in ALLOWED_EXTRA} == {}
