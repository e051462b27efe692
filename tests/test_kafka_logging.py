"""librdkafka's log lines go through Python logging (warning and above, rate-limited per
distinct message), and :func:`stream.kafka.probe_broker` answers "reachable" or one typed error.

The broker is real (the session's, or a closed port from ``free_port()`` for the unreachable
case); nothing is mocked."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from stream.dev.stack import free_port
from stream.errors import BrokerUnreachableError, StreamgateError
from stream.kafka import (
    BOOTSTRAP_SETTING,
    LIBRDKAFKA_LOGGER,
    RateLimitFilter,
    admin_config,
    client_config,
    consumer_config,
    probe_broker,
    producer_config,
)
from tests.support.clock import Clock


def _record(msg: str, level: int = logging.ERROR, *args: object) -> logging.LogRecord:
    return logging.LogRecord(LIBRDKAFKA_LOGGER, level, __file__, 1, msg, args or None, None)


def test_rate_limit_passes_first_then_one_per_window_with_the_suppressed_count() -> None:
    clock = Clock(1000.0)
    f = RateLimitFilter(every=30.0, clock=clock)
    line = "FAIL [rdkafka#producer-1] 127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after {}ms in state CONNECT)"
    assert f.filter(_record(line.format(0)))
    passed = 0
    for i in range(100):  # the same message with another counter: one distinct message
        clock.t += 0.2
        passed += f.filter(_record(line.format(i)))
    assert passed == 0
    clock.t += 30.0
    again = _record(line.format(7))
    assert f.filter(again)
    assert "(100 similar suppressed in 30 s)" in again.getMessage()
    # another address is another message
    assert f.filter(_record(line.replace("127.0.0.1:9", "127.0.0.1:10").format(0)))


def test_rate_limit_drops_below_warning_and_strips_unsafe_characters() -> None:
    f = RateLimitFilter()
    assert not f.filter(_record("CONFWARN something", logging.INFO))
    assert not f.filter(_record("debug", logging.DEBUG))
    r = _record("%s [%s] %s", logging.WARNING, "FAIL", "rdkafka#consumer-2", "Failed to resolve 'x.invalid:9092' {a}")
    assert f.filter(r)
    assert r.getMessage() == "FAIL [rdkafka#consumer-2] Failed to resolve x.invalid:9092 a"


def test_every_config_helper_routes_librdkafka_logs() -> None:
    for conf in (client_config("h:1"), admin_config("h:1"), producer_config("h:1"), consumer_config("h:1", "g")):
        assert conf["logger"] is logging.getLogger(LIBRDKAFKA_LOGGER)
        assert conf["log_level"] == 4
    assert any(isinstance(f, RateLimitFilter) for f in logging.getLogger(LIBRDKAFKA_LOGGER).filters)


def test_a_polled_client_on_a_closed_port_logs_one_line_not_hundreds() -> None:
    """A consumer polling a closed port for 4 s: librdkafka retries every ~50-100 ms (tens of FAIL
    lines on raw stderr before this change); through the logger, one line per distinct message."""
    port = free_port()
    code = textwrap.dedent(f"""
        import logging, time
        from confluent_kafka import Consumer
        from stream.kafka import consumer_config
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
        c = Consumer(consumer_config("127.0.0.1:{port}", "sg-test-closed"))
        c.subscribe(["nothing"])
        end = time.monotonic() + 4
        while time.monotonic() < end:
            c.consume(num_messages=10, timeout=0.2)
        c.close()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines, "no librdkafka line reached Python logging"
    assert all(f" {LIBRDKAFKA_LOGGER} " in line for line in lines), lines
    assert not any(line.startswith("%") for line in lines)  # no raw librdkafka stderr
    assert len(lines) <= 4, lines


def test_probe_broker_answers_on_the_real_broker(kafka_bootstrap: str) -> None:
    probe_broker(kafka_bootstrap)


def test_probe_broker_on_a_closed_port_raises_one_typed_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnreachableError) as info:
        probe_broker(address, timeout=2.0)
    msg = str(info.value)
    assert isinstance(info.value, StreamgateError)
    assert info.value.bootstrap == address
    assert address in msg and BOOTSTRAP_SETTING in msg and "Connection refused" in msg
    assert "\n" not in msg
