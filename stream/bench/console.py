"""The console's own cost: ``python -m stream.bench.console``.

(a) **CPU while the demo streams.** ``streamgate console`` runs as its own process with one
    browser-like client attached (``/api/events``, a new state pushed up to once a second);
    ``streamgate demo --no-console`` then streams on the same broker. The console's CPU time
    (utime + stime of ``/proc/<pid>/stat``, all its threads) is read at the demo's start and end:
    CPU seconds per minute of wall time. Then the same for an idle minute fraction (``--idle``
    seconds with nothing new on the topics).
(b) **A worker's throughput with the console attached.** ``streamgate bench gateway``'s run
    (:func:`stream.bench.gateway.run_gateway_bench`) without, then with, the console process
    attached to the same broker and a client on its events, after one discarded warm-up run, in
    ABBA order per round; meanwhile a
    feeder publishes one real metrics snapshot per second to ``ops.metrics`` (as ten workers do at
    the default 10 s interval) in both legs, so the console folds and pushes all along. The figure
    is the same-run ratio of the gateway's events/s with / without (median of the rounds).

Needs a broker and Redis: the configured ones, else an embedded stack it starts and stops.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Producer
from pydantic import SecretStr

from stream.config import Settings
from stream.dev.stack import free_port
from stream.kafka import ensure_topics, produce, producer_config

__all__ = ["ConsoleBenchResult", "cpu_seconds", "run_console_bench"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class ConsoleBenchResult:
    demo_seconds: float = 0.0
    demo_cpu_seconds: float = 0.0
    idle_seconds: float = 0.0
    idle_cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    pushes: int = 0  # states the attached client received during the demo
    without: list[float] = field(default_factory=list)  # gateway events/s, console not running
    with_console: list[float] = field(default_factory=list)
    ratio_pass_without: list[float] = field(default_factory=list)  # gateway / passthrough(json), same run
    ratio_pass_with: list[float] = field(default_factory=list)

    @property
    def cpu_per_minute(self) -> float:
        return 60 * self.demo_cpu_seconds / self.demo_seconds if self.demo_seconds else 0.0

    @property
    def idle_cpu_per_minute(self) -> float:
        return 60 * self.idle_cpu_seconds / self.idle_seconds if self.idle_seconds else 0.0

    @property
    def throughput_ratio(self) -> float:
        if not self.without or not self.with_console:
            return 0.0
        return statistics.median(self.with_console) / statistics.median(self.without)


class _Client(threading.Thread):
    """A browser tab: stays on ``/api/events`` and counts the states pushed to it."""

    def __init__(self, port: int) -> None:
        super().__init__(name="bench-console-client", daemon=True)
        self.port, self.pushes, self.stop = port, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/api/events", headers={"Host": f"127.0.0.1:{self.port}"})
                resp = conn.getresponse()
                while not self.stop.is_set():
                    line = resp.fp.readline()
                    if not line:
                        break
                    if line.startswith(b"data: "):
                        orjson.loads(line[6:])  # a tab parses what it gets
                        self.pushes += 1
            except OSError:
                self.stop.wait(0.5)


@contextlib.contextmanager
def _console(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], _Client]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "console", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = _Client(port)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamgate console exited ({proc.returncode})")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/state", headers={"Host": f"127.0.0.1:{port}"})
                if conn.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("streamgate console did not serve within 60 s")
            time.sleep(0.2)
        client.start()
        yield proc, client
    finally:
        client.stop.set()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _Feeder(threading.Thread):
    """Publishes one real gateway metrics snapshot per second to ``ops.metrics``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="bench-console-feeder", daemon=True)
        self.bootstrap, self.topic, self.stop = bootstrap, topic, threading.Event()

    def run(self) -> None:
        from stream.ops.metrics import WorkerMetrics
        from stream.ops.worker import snapshot_record

        producer = Producer(producer_config(self.bootstrap))
        m = WorkerMetrics("gateway")
        while not self.stop.wait(1.0):
            m.events_in(1000)
            m.events_out("protected", 990)
            m.events_out("dlq", 10)
            m.dead_lettered_many({"schema_violation": 10})
            rec = snapshot_record(m, "gateway")
            rec["pid"] = 1  # one steady instance
            produce(producer, self.topic, orjson.dumps(rec), b"gateway", stop=self.stop.is_set)
            producer.poll(0)
        producer.flush(10)


def _env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE_")}
    env.update({"STREAMGATE_KAFKA_BOOTSTRAP": s.kafka_bootstrap_or_dev(), "STREAMGATE_REDIS_URL": s.redis_url_or_dev(),
                "STREAMGATE_STATE_DIR": tempfile.mkdtemp(prefix="sg-bench-console-")})
    if s.master_key is not None:
        env["STREAMGATE_MASTER_KEY"] = s.master_key.get_secret_value()
    return env


def run_console_bench(settings: Settings, *, events: int = 50_000, rounds: int = 3, demo_events: int = 20_000,
                      idle: float = 30.0, say: Callable[[str], None] = print) -> ConsoleBenchResult:
    """(a) then (b) of the module docstring, on ``settings``' broker and Redis."""
    from stream.bench.gateway import run_gateway_bench

    r = ConsoleBenchResult()
    env = _env(settings)
    bootstrap = settings.kafka_bootstrap_or_dev()
    t = settings.topics
    ensure_topics(bootstrap, [t.metrics, t.frequencies, t.audit, t.snapshots], partitions=1)

    say(f"(a) console CPU while `streamgate demo --no-console --events {demo_events:,}` streams ...")
    with _console(env) as (proc, client):
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        demo = subprocess.run([sys.executable, "-m", "stream.cli", "demo", "--no-console", "--events", str(demo_events)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        r.demo_seconds, r.demo_cpu_seconds = time.monotonic() - t0, cpu_seconds(proc.pid) - c0
        r.pushes = client.pushes
        if demo.returncode != 0:
            raise RuntimeError(f"the demo failed ({demo.returncode}): {demo.stderr.decode(errors='replace')[-400:]}")
        say(f"    {r.demo_cpu_seconds:.2f} CPU s over {r.demo_seconds:.0f} s: {r.cpu_per_minute:.2f} CPU s per minute")
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle)
        r.idle_seconds, r.idle_cpu_seconds = time.monotonic() - t1, cpu_seconds(proc.pid) - c1
        r.peak_rss_mb = _peak_rss_mb(proc.pid)
        say(f"    idle: {r.idle_cpu_per_minute:.2f} CPU s per minute; peak RSS {r.peak_rss_mb:.0f} MB")

    say(f"(b) `streamgate bench gateway` ({events:,} events) without / with the console attached, "
        f"{rounds} round(s), ABBA ...")
    feeder = _Feeder(bootstrap, t.metrics)
    feeder.start()
    try:
        warm = run_gateway_bench(settings, events=events, say=lambda _m: None)
        say(f"    warm-up (not counted): gateway {warm.gateway_rate:,.0f} events/s")
        for i in range(rounds):
            for attached in ((False, True) if i % 2 == 0 else (True, False)):
                if attached:
                    with _console(env):
                        res = run_gateway_bench(settings, events=events, say=lambda _m: None)
                    r.with_console.append(res.gateway_rate)
                    r.ratio_pass_with.append(res.ratio)
                else:
                    res = run_gateway_bench(settings, events=events, say=lambda _m: None)
                    r.without.append(res.gateway_rate)
                    r.ratio_pass_without.append(res.ratio)
                say(f"    round {i + 1}, console {'attached' if attached else 'absent  '}: gateway "
                    f"{res.gateway_rate:,.0f} events/s (gateway / passthrough {res.ratio:.2f})")
    finally:
        feeder.stop.set()
        feeder.join(15)
    return r


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stream.bench.console", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000, help="events per gateway bench run")
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds of the throughput comparison")
    ap.add_argument("--demo-events", type=int, default=20_000, help="events of the demo streamed in (a)")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement after the demo")
    args = ap.parse_args(argv)
    from stream.commands.common import bench_settings

    base = Settings()
    if base.master_key is None and base.master_key_file is None:  # the console verifies with it
        base = base.model_copy(update={"master_key": SecretStr(base64.b64encode(os.urandom(32)).decode())})
    load0 = os.getloadavg()[0]
    with bench_settings(base) as s:
        r = run_console_bench(s, events=args.events, rounds=args.rounds, demo_events=args.demo_events,
                              idle=args.idle)
    med = statistics.median
    print()
    print(f"console CPU while the demo streams  {r.cpu_per_minute:6.2f} CPU s per minute "
          f"({r.demo_cpu_seconds:.2f} s over {r.demo_seconds:.0f} s; {r.pushes} states pushed to the client)")
    print(f"console CPU idle                    {r.idle_cpu_per_minute:6.2f} CPU s per minute; peak RSS {r.peak_rss_mb:.0f} MB")
    print(f"gateway without the console         {med(r.without):10,.0f} events/s  (gateway / passthrough "
          f"{med(r.ratio_pass_without):.2f})")
    print(f"gateway with the console attached   {med(r.with_console):10,.0f} events/s  (gateway / passthrough "
          f"{med(r.ratio_pass_with):.2f})")
    print(f"ratio with / without                {r.throughput_ratio:.2f}   (median of {len(r.without)} runs each)")
    print(f"load average (1 min) at the start / end: {load0:.2f} / {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
