"""``streamgate demo``: the gateway, the privatizer, the learner and the shredder, live, on the embedded stack.

Starts (or reuses) the stack, starts the four workers as real subprocesses
(``streamgate gateway``, ``privatizer``, ``learner``, ``shredder``), publishes a
synthetic clickstream with some invalid records mixed in, waits until every
event has landed in ``clicks.protected`` or ``clicks.dlq``, prints a summary,
waits for the privatizer's feature reports and labelled examples (sessions end
after ``DEMO_SESSION_GAP_SECONDS`` of quiet here, not the production 30 minutes),
stops it (it publishes its open windows) and shows the estimated population
frequencies beside the truth the generator knows, then lets the learner finish,
loads its signed snapshot and scores it against the true labels, then erases the
person of the sample event through the shredder and shows that event unreadable.
It cleans up what it started.

Meanwhile it serves the live console (:mod:`stream.console`) and prints its URL; the console
gets the truth the generator knows, drawn beside the estimates. ``hold`` (``--hold``) keeps
it serving after the summary until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import Message
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stream.apps.produce import publish
from stream.config import Settings
from stream.dev.stack import free_port
from stream.errors import StreamgateError
from stream.faults import make_invalid
from stream.gateway.framing import unframed
from stream.kafka import TopicReader, ensure_topics
from stream.synth import ClickstreamGenerator

if TYPE_CHECKING:
    from stream.console import ConsoleService, Truth

__all__ = ["DEMO_EPSILON", "DEMO_PERSON_MEMOS", "DEMO_SESSION_GAP_SECONDS", "run_demo"]

#: the privatizer's session gap in the demo (a short run: every session is over when the events stop)
DEMO_SESSION_GAP_SECONDS = 2.0
#: The demo's epsilon per report and per person's training example (the defaults: 1): weaker privacy, so
#: that the demo's 2,000 or so people visibly move the estimates. Their training examples teach the model a
#: little at either epsilon (ROC-AUC 0.57-0.67 at 4, 0.58-0.62 at 1, of which 0.544 is the purchase value
#: the label's definition fixes; tests/test_demo.py, docs/learning.md).
DEMO_EPSILON = 4.0
#: Memos one person may spend per epoch in the demo (the defaults: 12 at epsilon 1).
DEMO_PERSON_MEMOS = 24


class _Outputs:
    """Counts this run's records in clicks.protected / clicks.dlq by reading them (the
    embedded broker's high watermarks are per batch, so offsets can't be used to count)."""

    def __init__(self, reader: TopicReader, settings: Settings, since_ms: int) -> None:
        self.c, self.t, self.since_ms = reader, settings.topics, since_ms
        self.want_ids: set[str] = set()
        self.want_sources: set[tuple[Any, Any]] = set()
        self.protected: dict[str, dict[str, Any]] = {}
        self.reasons: Counter[str] = Counter()
        self._dlq_seen: set[tuple[Any, Any]] = set()

    @property
    def count(self) -> int:
        return len(self.protected) + len(self._dlq_seen)

    def poll(self, timeout: float = 0.2) -> None:
        for m in self.c.poll(timeout):
            value = m.value()
            if value is None or m.timestamp()[1] < self.since_ms:
                continue
            rec = orjson.loads(unframed(value) or b"")  # STREAMGATE_GATEWAY_FRAME_OUTPUT
            if m.topic() == self.t.protected:
                if rec.get("event_id") in self.want_ids:
                    self.protected[rec["event_id"]] = rec
            else:
                src = rec.get("source", {})
                where = (src.get("partition"), src.get("offset"))
                if src.get("topic") == self.t.raw and where in self.want_sources and where not in self._dlq_seen:
                    self._dlq_seen.add(where)
                    self.reasons[rec["reason"]] += 1


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StreamgateError(f"the gateway worker exited (code {proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    raise StreamgateError(f"the gateway worker did not become ready within {timeout:.0f} s; see {log}")


@contextlib.contextmanager
def _stack(settings: Settings, run_dir: Path, console: Console) -> Iterator[tuple[str, str, bool]]:
    """(bootstrap, redis_url, started_here)"""
    if settings.kafka_bootstrap and settings.redis_url:
        yield settings.kafka_bootstrap, settings.redis_url, False
        return
    from stream.dev.stack import DevStack, ephemeral_stack

    running = DevStack(settings.state_dir).status()
    if running is not None:
        console.print(f"using the running dev stack: broker {running.kafka_bootstrap}, redis {running.redis_url}")
        yield settings.kafka_bootstrap or running.kafka_bootstrap, settings.redis_url or running.redis_url, False
        return
    with console.status("starting the embedded stack (Tansu broker + Redis) ..."):
        cm = ephemeral_stack(run_dir / "stack")
        info = cm.__enter__()
    console.print(f"embedded stack up: broker {info.kafka_bootstrap}, redis {info.redis_url}")
    try:
        yield settings.kafka_bootstrap or info.kafka_bootstrap, settings.redis_url or info.redis_url, True
    finally:
        with console.status("stopping the embedded stack ..."):
            cm.__exit__(None, None, None)


def _redis_roles(redis_url: str, prefix: str, run_dir: Path) -> dict[str, dict[str, str]]:
    """Redis ACL users for the demo's workers on the stack it started (the demo itself stays the
    default user): per worker, the environment naming its user and its password file (mode 0600)."""
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    import redis

    from stream.storage.acl import apply_acls

    roles = ("gateway", "privatizer", "shredder")
    passwords = {role: secrets.token_urlsafe(24) for role in roles}
    admin = redis.Redis.from_url(redis_url)
    try:
        apply_acls(admin, prefix, passwords, default_off=False)
    finally:
        admin.close()
    parts = urlsplit(redis_url)
    out: dict[str, dict[str, str]] = {}
    for role in roles:
        path = run_dir / f"redis-{role}.password"
        path.touch(mode=0o600)
        path.write_text(passwords[role])
        url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        out[role] = {"STREAMGATE_REDIS_URL": url, "STREAMGATE_REDIS_PASSWORD_FILE": str(path)}
    return out


def _settings_env(s: Settings) -> dict[str, str]:
    """The workers' environment for what ``s`` says about topics, key prefix, groups and the master key
    (the same values the CLI read from the environment; a caller's own settings reach the workers too)."""
    env = {"STREAMGATE_TOPICS": s.topics.model_dump_json(), "STREAMGATE_REDIS_KEY_PREFIX": s.redis_key_prefix,
           "STREAMGATE_GROUP_PREFIX": s.group_prefix}
    if s.master_key is not None:
        env["STREAMGATE_MASTER_KEY"] = s.master_key.get_secret_value()
    if s.redis_password_file is not None:
        env["STREAMGATE_REDIS_PASSWORD_FILE"] = str(s.redis_password_file)
    return env


def run_demo(settings: Settings, *, events: int = 20_000, invalid_rate: float = 0.02, seed: int = 0,
             epsilon: float = DEMO_EPSILON, console_port: int | None = 0, console_host: str = "127.0.0.1",
             console_token: str | None = None, hold: Callable[[], None] | None = None) -> None:
    """The demo (module docstring). ``console_port``: where the live console serves (0: a free port;
    None: no console). ``hold``: called after the summary while the console still serves (``--hold``:
    until Ctrl-C)."""
    console = Console(stderr=False)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    run_dir = settings.state_dir / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    console.rule(f"[bold]streamgate demo[/] — {events:,} events, run {run_id}")
    person_cap = DEMO_PERSON_MEMOS * epsilon
    settings = settings.model_copy(update={"ldp_epsilon": epsilon, "learn_label_epsilon": epsilon,
                                           "ldp_person_epsilon": person_cap})
    console.print(f"privacy in this demo: epsilon {epsilon / 2:g} per attribute of each report (fresh noise, "
                  f"no memo), at most {person_cap:g} per person per day (defaults: 0.5 and 12): weaker than the "
                  "defaults, so that a demo's few people can teach the model; `--epsilon 1` shows what the "
                  "defaults cost.")

    env = dict(os.environ)
    env.update({"STREAMGATE_LDP_EPSILON": f"{epsilon:g}", "STREAMGATE_LEARN_LABEL_EPSILON": f"{epsilon:g}",
                "STREAMGATE_LDP_PERSON_EPSILON": f"{person_cap:g}"})
    keyring_path: Path | None = None
    if settings.master_key is None and settings.master_key_file is None:
        from stream.crypto.keyring import Keyring

        keyring_path = run_dir / "demo-keyring.json"
        Keyring.generate().save(keyring_path)
        env["STREAMGATE_MASTER_KEY_FILE"] = str(keyring_path)
        console.print(f"no master key configured: generated a throwaway demo keyring at {keyring_path}")

    gateway_log = run_dir / "gateway.log"
    privatizer_log = run_dir / "privatizer.log"
    shredder_log = run_dir / "shredder.log"
    learner_log = run_dir / "learner.log"
    model_name = f"demo-{run_id}".lower()
    with _stack(settings, run_dir, console) as (bootstrap, redis_url, _started):
        env.update(_settings_env(settings))
        env.update({"STREAMGATE_KAFKA_BOOTSTRAP": bootstrap, "STREAMGATE_REDIS_URL": redis_url})
        # its own stack: each worker connects to Redis as its role's ACL user (stream/storage/acl.py)
        role_env = _redis_roles(redis_url, settings.redis_key_prefix, run_dir) if _started else {}
        if role_env:
            console.print("redis: the gateway, privatizer and shredder connect as their ACL users "
                          "(stream/storage/acl.py: each only its keys and commands)")
        s = settings.model_copy(update={"kafka_bootstrap": bootstrap, "redis_url": redis_url,
                                        "master_key_file": keyring_path or settings.master_key_file,
                                        "learn_model_name": model_name})
        t = s.topics
        ensure_topics(bootstrap, [t.raw, t.protected, t.dlq, t.features, t.frequencies], partitions=s.topic_partitions)
        ensure_topics(bootstrap, [t.erasure, t.audit, t.snapshots], partitions=1)
        since_ms = int(time.time() * 1000) - 1000
        probe = TopicReader(bootstrap, [t.protected, t.dlq], mode="tail", batch=2000, poll_timeout=0.2,
                            client_id=f"streamgate-demo-{run_id}")
        outputs = _Outputs(probe, s, since_ms=since_ms)
        procs: list[subprocess.Popen[bytes]] = []
        live: ConsoleService | None = None
        try:
            live = _start_console(console, s, bootstrap, since_ms, console_port, console_host, console_token)
            gw_port, pv_port, sh_port, ln_port = free_port(), free_port(), free_port(), free_port()
            gw = _start_worker("gateway", {**env, **role_env.get("gateway", {}), "STREAMGATE_WEB_PORT": str(gw_port)},
                               gateway_log)
            gw.web_port = gw_port  # type: ignore[attr-defined]
            procs.append(gw)
            pv_env = {**env, **role_env.get("privatizer", {}), "STREAMGATE_WEB_PORT": str(pv_port),
                      "STREAMGATE_LEARN_SESSION_GAP_SECONDS": str(DEMO_SESSION_GAP_SECONDS)}
            pv = _start_worker("privatizer", pv_env, privatizer_log)
            pv.web_port = pv_port  # type: ignore[attr-defined]
            procs.append(pv)
            sh = _start_worker("shredder", {**env, **role_env.get("shredder", {}), "STREAMGATE_WEB_PORT": str(sh_port)},
                               shredder_log)
            procs.append(sh)
            ln = _start_worker("learner", {**env, "STREAMGATE_WEB_PORT": str(ln_port),
                                           "STREAMGATE_LEARN_MODEL_NAME": model_name,
                                           "STREAMGATE_GROUP_PREFIX": f"streamgate-demo-{run_id}",
                                           "STREAMGATE_LEARN_PUBLISH_INTERVAL_SECONDS": "2"}, learner_log)
            ln.web_port = ln_port  # type: ignore[attr-defined]
            procs.append(ln)
            with console.status("starting the gateway, privatizer, learner and shredder workers (Faust) ..."):
                _wait_ready(gw, gw_port, gateway_log)
                _wait_ready(pv, pv_port, privatizer_log)
                _wait_ready(ln, ln_port, learner_log)
                _wait_ready(sh, sh_port, shredder_log)
            console.print(f"workers ready: gateway (pid {gw.pid}, http://127.0.0.1:{gw_port}/metrics), "
                          f"privatizer (pid {pv.pid}, :{pv_port}), learner (pid {ln.pid}, :{ln_port}), "
                          f"shredder (pid {sh.pid}, :{sh_port})")
            valid, sample, protected_sample = _drive(console, s, outputs, gw, gateway_log, events, invalid_rate, seed)
            examples, truth_holds = _privacy_summary(console, s, pv, privatizer_log, valid, since_ms)
            if live is not None and truth_holds:  # the whole run's truth, once every window is published
                live.set_truth(_console_truth(s, valid, run_id))
            _learning_summary(console, s, ln, learner_log, valid, examples)
            if sample is not None and protected_sample is not None:
                _erasure_check(console, s, sample, protected_sample, run_id, since_ms)
            if live is not None and hold is not None:
                console.print(f"the console keeps serving at {live.login_url}  (Ctrl-C ends the demo)")
                hold()
        finally:
            for proc in procs:
                _stop(proc)
            probe.close()
            if live is not None:
                live.stop()
    console.print(f"logs: {run_dir}  (gateway: {gateway_log.name}, privatizer: {privatizer_log.name}, "
                  f"learner: {learner_log.name}, shredder: {shredder_log.name})")
    console.rule("done")


def _start_console(console: Console, s: Settings, bootstrap: str, since_ms: int, port: int | None, host: str,
                   token: str | None) -> ConsoleService | None:
    """The live console of this run (records since the run started), or None."""
    if port is None:
        return None
    from stream.console import ConsoleService

    try:
        live = ConsoleService(s, host=host, port=port, token=token, since_ms=since_ms, bootstrap=bootstrap).start()
    except OSError as exc:  # the port is taken: the demo goes on without its console
        console.print(f"[yellow]console not started: cannot serve on {host}:{port} ({exc.strerror or exc})[/]")
        return None
    console.print(f"console: {live.login_url}  (live while the demo runs; --hold keeps it open after the summary)")
    return live


def _truth(s: Settings, valid: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], float, int]:
    """The truth of what the estimates estimate, computed from the clear events alone: per categorical
    attribute the frequency of each value, and the mean price (absent = 0), among each person's first c
    valid events (c = the person cap / a report's epsilons: the events the privatizer can release; the
    demo runs within one epoch), and how many events that is."""
    from stream.ldp.policy import NONE_VALUE, LdpPolicy
    from stream.ldp.privatizer import reports_per_person
    from stream.schema import load_schema

    policy = LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)
    joint = s.learn_examples and s.learn_model == "joint-nb"  # its example is prepaid once per person-epoch
    label_eps = s.learn_label_epsilon if s.learn_examples and not joint else None
    cap = reports_per_person(policy, max(0.0, s.ldp_person_epsilon - (s.learn_label_epsilon if joint else 0.0)),
                             label_eps)
    seen: Counter[str] = Counter()
    within = []
    for ev in valid:
        who = str(ev.get("user_id"))
        if seen[who] < cap:
            within.append(ev)
        seen[who] += 1
    truth: dict[str, dict[str, float]] = {}
    n = max(1, len(within))
    for attr in policy.attributes:
        if attr.kind != "categorical":
            continue
        counts: Counter[str] = Counter()
        for ev in within:
            v = ev.get(attr.name)
            idx = attr.index_of(v)
            if idx is not None:
                counts[attr.domain[idx]] += 1
        truth[attr.name] = {k: c / n for k, c in counts.items()}
        truth[attr.name].setdefault(NONE_VALUE, 0.0)
    true_mean = sum(policy.by_name["price"].clamp(ev.get("price")) for ev in within) / n
    return truth, true_mean, len(within)


def _console_truth(s: Settings, valid: list[dict[str, Any]], run_id: str) -> Truth:
    from stream.console import Truth

    freqs, mean, _n = _truth(s, valid)
    return Truth(frequencies=freqs, means={"price": mean}, events=len(valid), label=f"demo {run_id}")


def _start_worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", name, "--loglevel", "info"],
            env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _read_since(bootstrap: str, topic: str, since_ms: int, *, idle: float) -> list[bytes]:
    """The values of ``topic`` to its end (then on for ``idle`` s) of this run's hour."""
    out: list[bytes] = []
    with TopicReader(bootstrap, topic, linger=idle, batch=2000, poll_timeout=0.2,
                     client_id=f"streamgate-demo-read-{uuid.uuid4().hex[:6]}") as reader:
        for m in reader:
            value = m.value()
            # features carry an hour-floored timestamp: filter those by the hour of the run
            if value is not None and m.timestamp()[1] >= since_ms - 3_600_000:
                out.append(value)
    return out


def _privacy_summary(console: Console, s: Settings, pv: subprocess.Popen[bytes], log: Path,
                     valid: list[dict[str, Any]], since_ms: int) -> tuple[int, bool]:
    """Wait for the privatizer (feature reports, then the labelled examples of the ended sessions),
    stop it (it publishes its open windows), then show estimated vs true. Returns the number of
    labelled examples it emitted, and whether the truth names the events it reported."""
    from stream.commands.ldp import render_estimates
    from stream.ldp.aggregate import latest_per_source, merge_records
    from stream.ldp.policy import LdpPolicy
    from stream.schema import load_schema

    t = s.topics
    bootstrap = s.kafka_bootstrap_or_dev()
    policy = LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)
    with console.status("privatizer: waiting for the feature reports ..."):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if pv.poll() is not None:
                raise StreamgateError(f"the privatizer worker exited (code {pv.returncode}); see {log}")
            stats = _healthz_stats(pv, "privatizer")
            done = 0 if not stats else (stats.get("reports", 0) + stats.get("fully_suppressed", 0)
                                        + sum(stats.get("skipped", {}).values()))
            if done >= len(valid) and stats and stats.get("released", 0) >= stats.get("reports", 0):
                break
            time.sleep(0.5)
    with console.status(f"privatizer: labelling the examples of the ended sessions "
                        f"(a session ends after {DEMO_SESSION_GAP_SECONDS:g} s of quiet in the demo) ..."):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pv.poll() is None:
            stats = _healthz_stats(pv, "privatizer") or {}
            labelled = (stats.get("examples", 0) + stats.get("examples_suppressed", 0)
                        + sum(stats.get("examples_dropped", {}).values()))
            if stats and stats.get("examples_pending", 1) == 0 and labelled >= stats.get("reports", 0):
                break
            time.sleep(0.5)
        stats = _healthz_stats(pv, "privatizer") or {}
        _stop(pv)  # graceful: publishes the windows still open
    freq = [orjson.loads(v) for v in _read_since(bootstrap, t.frequencies, since_ms, idle=3.0)]
    freq = latest_per_source(r for r in freq if int(r.get("window", {}).get("end_ms", 0)) >= since_ms)
    n_features = stats.get("reports", 0)
    table = Table(title="local differential privacy (privatizer)", show_header=False)
    table.add_row("feature reports -> " + t.features, f"{n_features:,}  (no key, no token, no identifier, "
                  "hour-of-week only)")
    table.add_row("epsilon per report", ", ".join(f"{a.name}: {a.epsilon_1:g} ({a.mechanism})" for a in policy.attributes)
                  + " - fresh noise on every report, no memo")
    table.add_row("not released (person cap)", f"{stats.get('over_budget', 0):,} events (at most "
                  f"{s.ldp_person_epsilon:g} epsilon per person and day, features and labels together)")
    table.add_row("estimand", "each person's first events of the day within the cap: the 'true' column is "
                  "their truth, computed from the clear events")
    table.add_row("estimate records -> " + t.frequencies, f"{len(freq):,}")
    console.print(table)
    merged = merge_records(policy, freq)
    truth, true_mean, n_within = _truth(s, valid)
    shown = [r for r in merged if r["attribute"] in ("event_type", "category", "price")]
    # every report carries event_type: its merged n is how many reports the published windows hold
    estimated = next((int(r["n"]) for r in merged if r["attribute"] == "event_type"), 0)
    same = n_within == n_features == estimated
    console.print(render_estimates(shown, top=6, truth=truth if same else None))
    if same:
        console.print(f"true mean price (absent = 0) of the same events: {true_mean:,.2f}   (estimates come from "
                      f"randomized reports only; `STREAMGATE_LDP_EPSILON={s.ldp_epsilon:g} streamgate estimates --total` shows them while this stack runs)")
    elif n_within != n_features:  # e.g. a reused Redis whose ledgers already charged these people today, or a run across midnight UTC
        console.print(f"[yellow]no truth shown: the privatizer reported {n_features:,} events, but each person's "
                      f"first events within the cap in this run are {n_within:,}, so the estimates name another "
                      "population (people charged before this run, or a new epoch)[/]")
    else:
        console.print(f"[yellow]no truth shown: the published windows hold {estimated:,} of the {n_features:,} "
                      "reports (a window of too few people is withheld, a late record is not estimated), so the "
                      "estimates name a smaller population than the truth would[/]")
    return int(stats.get("examples", 0)), same


def _learning_summary(console: Console, s: Settings, ln: subprocess.Popen[bytes], log: Path,
                      valid: list[dict[str, Any]], examples: int) -> None:
    """Let the learner learn every labelled example, stop it (final snapshot), load the signed
    snapshot like a serving consumer would and score it against the true labels the demo knows."""
    from stream.apps.learner import load_latest_snapshot
    from stream.bench.learn import auc
    from stream.ldp.labels import POSITIVE_EVENT_TYPE
    from stream.ldp.privatizer import hour_of_week

    with console.status(f"learner: learning from {examples:,} labelled private examples ..."):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if ln.poll() is not None:
                raise StreamgateError(f"the learner worker exited (code {ln.returncode}); see {log}")
            stats = _healthz_stats(ln, "learner") or {}
            if stats.get("learned", 0) >= examples:
                break
            time.sleep(0.5)
        _stop(ln)  # graceful: publishes its final snapshot
    try:
        snap = load_latest_snapshot(s)
    except StreamgateError as exc:
        console.print(f"[red]✗[/] no model snapshot to show ({exc}); see {log}")
        return
    model = snap.model
    # the true label of each event (the demo knows it: does its session contain a purchase?)
    buying = {ev["session_id"] for ev in valid if ev.get("event_type") == POSITIVE_EVENT_TYPE}
    truth = [ev["session_id"] in buying for ev in valid]
    scores = [model.predict_proba_event(ev, hour_of_week(ev.get("ts"))) for ev in valid]
    metrics = snap.metrics
    table = Table(title="online learning on the private stream (learner, River)", show_header=False)
    table.add_row("model snapshot -> " + s.topics.snapshots,
                  f"{snap.name}: {snap.examples_seen:,} examples learned, signed (verified before unpickling)")
    joint = s.learn_model == "joint-nb"
    if joint:
        table.add_row("examples", f"one per person and day: one attribute drawn (probabilities planned from the schema), "
                      "its value and the label "
                      f"session_purchase randomized together at epsilon {s.learn_label_epsilon:g} (prepaid on the person's "
                      "ledger at their first event; released shuffled across people); naive Bayes from debiased counts")
    else:
        table.add_row("label", "session_purchase: the event's session contains a purchase; randomized response at "
                      f"epsilon {s.learn_label_epsilon:g}, corrected loss (Natarajan et al. 2013)")
    table.add_row("progressive validation", f"ROC-AUC {metrics.get('roc_auc', float('nan')):.3f}, "
                  f"log loss {metrics.get('log_loss', float('nan')):.3f}  (against the randomized labels: "
                  "all the learner ever sees" + ("; GRR reports only, from the one attribute they show)" if joint
                                                 else ")"))
    table.add_row("true labels (demo only)", f"ROC-AUC {auc(truth, scores):.3f} serving on the clear values "
                  f"of these {len(valid):,} events (0.5 = chance) at epsilon {s.learn_label_epsilon:g}"
                  + (f", learned from {snap.examples_seen:,} people. Utility grows with people, not events: "
                     "at this scale 0.54-0.65 (the same learner on clear examples 0.67-0.70), at epsilon 1 "
                     "0.5; `streamgate bench learn --people` shows AUC vs people and epsilon" if joint else
                     ". `streamgate bench learn` shows AUC vs epsilon"))
    top = sorted(model.weights().items(), key=lambda kv: -abs(kv[1]))[:4]
    table.add_row("largest weights", ", ".join(f"{k} {w:+.2f}" for k, w in top))
    console.print(table)


def _healthz_stats(proc: subprocess.Popen[bytes], key: str) -> dict[str, Any] | None:
    port = getattr(proc, "web_port", None)
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            body = orjson.loads(resp.read())
    except (OSError, urllib.error.URLError, orjson.JSONDecodeError):
        return None
    stats = body.get(key)
    return stats if isinstance(stats, dict) else None


def _drive(
    console: Console, s: Settings, outputs: _Outputs, proc: subprocess.Popen[bytes],
    gateway_log: Path, events: int, invalid_rate: float, seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
    """Publish, wait for the gateway's outputs, print the gateway summary; returns the valid
    events, and one raw event with its protected form."""
    t = s.topics
    bootstrap = s.kafka_bootstrap_or_dev()
    rng = random.Random(seed + 1)
    gen = ClickstreamGenerator(seed=seed)
    sample: dict[str, Any] | None = None
    invalid_payloads: set[bytes] = set()
    valid: list[dict[str, Any]] = []

    def items() -> Iterator[Any]:
        nonlocal sample
        for ev in gen.events(events):
            if rng.random() < invalid_rate:
                raw = make_invalid(ev, rng)[1]
                invalid_payloads.add(raw)
                yield raw
            else:
                if sample is None and ev.get("email") and ev.get("ip"):
                    sample = ev
                outputs.want_ids.add(ev["event_id"])
                valid.append(ev)
                yield ev

    def delivered(msg: Message) -> None:
        if msg.value() in invalid_payloads:
            outputs.want_sources.add((msg.partition(), msg.offset()))

    cols = (TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console) as progress:
        pub = progress.add_task("published to " + t.raw, total=events)
        done = progress.add_task("protected + dead-lettered", total=events)
        t0 = time.monotonic()
        publish(bootstrap, t.raw, items(), on_progress=lambda n: progress.update(pub, completed=n),
                progress_every=500, on_delivered=delivered)
        last_change, last_n = time.monotonic(), -1
        while outputs.count < events:
            if proc.poll() is not None:
                raise StreamgateError(f"the gateway worker exited (code {proc.returncode}); see {gateway_log}")
            outputs.poll()
            n = outputs.count
            progress.update(done, completed=n)
            if n != last_n:
                last_change, last_n = time.monotonic(), n
            elif time.monotonic() - last_change > 90:
                raise StreamgateError(f"no progress for 90 s ({n:,}/{events:,} events out); see {gateway_log}")
        elapsed = time.monotonic() - t0

    n_protected, n_dlq = len(outputs.protected), outputs.count - len(outputs.protected)
    protected_sample = outputs.protected.get(sample["event_id"]) if sample is not None else None

    table = Table(title="summary", show_header=False)
    table.add_row("events in", f"{events:,}")
    table.add_row("protected  -> " + t.protected, f"{n_protected:,}")
    table.add_row("dead-lettered -> " + t.dlq,
                  f"{n_dlq:,}  " + ", ".join(f"{k}: {v}" for k, v in outputs.reasons.most_common()))
    table.add_row("accounted for", f"{n_protected + n_dlq:,} of {events:,}" + ("  ✓" if n_protected + n_dlq == events else "  (!)"))
    table.add_row("end-to-end throughput", f"{events / elapsed:,.0f} events/s (publish -> last output; "
                  "`streamgate bench gateway` measures the gateway alone)")
    console.print(table)
    if sample is not None and protected_sample is not None:
        raw_panel = Panel(orjson.dumps(sample, option=orjson.OPT_INDENT_2).decode(), title="raw (clicks.raw)")
        prot_panel = Panel(orjson.dumps(protected_sample, option=orjson.OPT_INDENT_2).decode(),
                           title="protected (clicks.protected)")
        if console.width >= 150:
            grid = Table.grid(expand=True, padding=1)
            grid.add_column(ratio=1)
            grid.add_column(ratio=1)
            grid.add_row(raw_panel, prot_panel)
            console.print(grid)
        else:
            console.print(raw_panel)
            console.print(prot_panel)
        from stream.components import build_dek_provider
        from stream.crypto.keyring import Keyring
        from stream.gateway.reader import ProtectedEventReader
        from stream.schema import load_schema

        reader = ProtectedEventReader(load_schema(s.schema_name), build_dek_provider(s, Keyring.from_settings(s), role="reader"))
        back = reader.decrypt(protected_sample)
        ok = all(back.get(f) == sample.get(f) for f in ("email", "ip", "phone", "user_agent", "shipping_address"))
        console.print(("[green]✓[/]" if ok else "[red]✗[/]") + " decrypting with the master key recovers every encrypted field"
                      f" of event {sample['event_id']} (`streamgate decrypt --user ...`)")
    return valid, sample, protected_sample


def _erasure_check(console: Console, s: Settings, sample: dict[str, Any], protected_sample: dict[str, Any],
                   run_id: str, since_ms: int) -> None:
    """Erase the sample's person through the shredder and show their event is now unreadable."""
    from stream.apps.produce import encode_raw
    from stream.commands.retention import read_receipts
    from stream.components import build_dek_provider
    from stream.crypto.keyring import Keyring
    from stream.crypto.signing import signing_key
    from stream.gateway.reader import SHREDDED_MASK, ProtectedEventReader
    from stream.retention.core import sign_erasure_request
    from stream.retention.receipts import rfc3339
    from stream.schema import load_schema

    t = s.topics
    bootstrap = s.kafka_bootstrap_or_dev()
    rid = f"demo-{run_id}"
    # signed with the eraser key (derived from the demo's master keyring): the shredder runs nothing else
    request = sign_erasure_request(signing_key(Keyring.from_settings(s), "erasure"), rid, user_id=sample["user_id"],
                                   requested_at=rfc3339(time.time()), audience=s.deployment_id)
    _key, value = encode_raw(request)
    publish(bootstrap, t.erasure, [value])
    receipt: dict[str, Any] | None = None
    with console.status(f"erasure: asked the shredder to forget the sample's person (request {rid}) ..."):
        deadline = time.monotonic() + 60
        while receipt is None and time.monotonic() < deadline:
            for r in read_receipts(bootstrap, t.audit, idle_timeout=1.0,
                                   stop=lambda r: r.get("kind") == "erasure" and r.get("request_id") == rid):
                if r.get("kind") == "erasure" and r.get("request_id") == rid:
                    receipt = r
    if receipt is None:
        console.print("[red]✗[/] no erasure receipt within 60 s (see the shredder's log)")
        return
    reader = ProtectedEventReader(load_schema(s.schema_name), build_dek_provider(s, Keyring.from_settings(s), role="reader"),
                                  on_shredded="mask")
    after = reader.decrypt(protected_sample)
    fields = [f for f in ("email", "ip", "phone", "user_agent", "shipping_address") if sample.get(f) is not None]
    masked = all(after.get(f) == SHREDDED_MASK for f in fields)
    console.print(f"erasure receipt on {t.audit}: status {receipt.get('status')}, "
                  f"{receipt.get('keys_shredded')} key(s) destroyed at {receipt.get('at')}")
    console.print(("[green]✓[/]" if masked else "[red]✗[/]") + f" the same event now reads {fields[0]}="
                  f"{escape(repr(after.get(fields[0])))} for everyone, master key or not (crypto-shredding; "
                  "`streamgate audit --reason erasure`)")
