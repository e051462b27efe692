"""The CLI end to end on a real broker and a real Redis: ``streamgate gateway`` as a real worker
process, ``streamgate produce``, ``streamgate decrypt``, ``streamgate dlq inspect``, the worker's
/healthz and /readyz, and a clean SIGTERM stop.

One worker serves the whole module (starting one costs a consumer-group join); every test reads
the state it needs from the module fixture. Topics, consumer group, Redis key prefix, master key
and state dir are unique to this module run. The tests run in file order; the SIGTERM test is last.

Clean-stop exit code: Faust's worker (mode.Worker.execute_from_commandline) runs inside
``mode.worker.exiting()``, which ends with ``sys.exit(EX_OK)`` after a signal-initiated stop, so a
clean SIGTERM stop exits with 0; an exception escaping the worker gives EX_FAILURE (1).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream.config import TopicNames
from stream.crypto.keyring import Keyring
from stream.dev.stack import free_port
from stream.schema import load_schema
from stream.storage.pseudonyms import Pseudonyms
from stream.synth import ClickstreamGenerator
from tests.support.fixtures import delete_prefixed_keys
from tests.support.kafka import read_topic
from tests.support.procscan import procs_mentioning
from tests.support.workers import stop_process, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENCRYPTED = ("email", "phone", "ip", "user_agent", "shipping_address")
CLEAR = ("event_id", "event_type", "ts", "page", "product_id", "currency", "quantity", "category", "price",
         "device", "country")
N_EVENTS = 300
READ_IDLE = "3"


# --------------------------------------------------------------------------- helpers
def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream.cli", *args]


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the gateway worker exited with code {proc.returncode} before it was ready; "
                        f"log:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused, or HTTPError 503 (not ready yet)
            pass
        time.sleep(0.25)
    pytest.fail(f"the gateway worker was not ready within {timeout:.0f} s; log:\n{_tail(log)}")


def _procs_with(marker: bytes) -> list[int]:
    return [pid for pid, _ in procs_mentioning(marker)]


# --------------------------------------------------------------------------- the module's worker
@dataclass(repr=False)  # no env / master key / plaintext in assertion messages
class Run:
    env: dict[str, str]
    marker: bytes
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    topics: TopicNames
    bootstrap: str
    master_key: str
    events: list[dict[str, Any]]                  # the valid events of the file, in order
    invalid: list[tuple[str, bytes]]              # (expected reason, raw line) of the file
    n_lines: int                                  # lines published from the file
    secrets: list[str]                            # plaintext that must never show outside --unseal/decrypt
    generated: list[dict[str, Any]] = field(default_factory=list)  # published by `produce --generate`

    def __repr__(self) -> str:
        return f"Run(raw={self.topics.raw!r}, pid={self.proc.pid}, port={self.port})"

    @property
    def valid_ids(self) -> set[str]:
        return {e["event_id"] for e in self.events} | {e["event_id"] for e in self.generated}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_cli(*args), env=self.env, capture_output=True, text=True, timeout=timeout)


def _invalid_lines(events: list[dict[str, Any]], uid: str) -> list[tuple[str, bytes]]:
    unknown = dict(events[5], event_id=str(uuid.uuid4()), secret_note=f"unknown.field.{uid}@example.org")
    missing = dict(events[6], event_id=str(uuid.uuid4()), email=f"missing.page.{uid}@example.org")
    missing.pop("page")
    return [
        ("not_json", f"not json: call leaky.person.{uid}@example.net".encode()),
        ("unknown_field", orjson.dumps(unknown)),
        ("not_object", orjson.dumps([{"email": f"array.{uid}@example.org", "user_id": f"usr_arr{uid}"}])),
        ("missing_field", orjson.dumps(missing)),
    ]


@pytest.fixture(scope="module")
def gw(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    uid = uuid.uuid4().hex[:8]
    state_dir = tmp_path_factory.mktemp("cli-roundtrip")
    base = TopicNames()
    topics = TopicNames(**{n: f"{getattr(base, n)}.t{uid}" for n in TopicNames.model_fields})
    prefix = f"sgtest-{uid}"  # same shape as the redis_prefix fixture (module scope can't use it)
    master_key = base64.b64encode(os.urandom(32)).decode()
    group = f"sgcli-{uid}"
    port = free_port()
    env = worker_env(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=prefix, master_key=master_key,
                     state_dir=state_dir, topics=topics, STREAMGATE_GROUP_PREFIX=group,
                     STREAMGATE_WEB_PORT=str(port))

    events = list(ClickstreamGenerator(seed=11).events(N_EVENTS))
    invalid = _invalid_lines(events, uid)
    lines = [orjson.dumps(e) for e in events]
    for i, (_, raw) in enumerate(invalid):  # spread them through the file
        lines.insert(40 + 70 * i, raw)
    events_file = state_dir / "events.jsonl"
    events_file.write_bytes(b"\n".join(lines) + b"\n")
    secrets = [f"{uid}@example", f"usr_arr{uid}"]
    secrets += [e[f] for e in events for f in (*ENCRYPTED, "user_id") if isinstance(e.get(f), str)]

    log = state_dir / "gateway.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(_cli("gateway", "--loglevel", "info"), env=env, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=state_dir)
    # the marker is the worker's unique working directory, which its children inherit: its environment
    # is no marker, since setproctitle (a Faust dependency) overwrites /proc/<pid>/environ
    run = Run(env=env, marker=str(state_dir).encode(), proc=proc, port=port, log=log,
              topics=topics, bootstrap=kafka_bootstrap, master_key=master_key, events=events, invalid=invalid,
              n_lines=len(lines), secrets=secrets)
    try:
        _wait_ready(proc, port, log)
        produced = run.run("produce", "--file", str(events_file), "--allow-invalid")
        assert produced.returncode == 0, produced.stderr
        assert f"{len(invalid):,} of {len(lines):,} lines are not valid" in produced.stderr
        assert produced.stdout == f"published {len(lines):,} records to {topics.raw}\n"
        yield run
    finally:
        stop_process(proc)
        for pid in _procs_with(run.marker):  # only processes this module started carry the marker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5.0)
        try:
            delete_prefixed_keys(client, prefix)
        finally:
            client.close()


@pytest.fixture(scope="module")
def outputs(gw: Run) -> dict[str, list[Any]]:
    """Every output of the file's records, read until all arrived (exactly-once accounting)."""
    prot = read_topic(gw.bootstrap, gw.topics.protected, expect=N_EVENTS, timeout=90)
    dlq = read_topic(gw.bootstrap, gw.topics.dlq, expect=len(gw.invalid), timeout=90)
    assert len(prot) == N_EVENTS, f"{len(prot)} protected records; worker log:\n{_tail(gw.log)}"
    assert len(dlq) == len(gw.invalid), f"{len(dlq)} DLQ records; worker log:\n{_tail(gw.log)}"
    return {"protected": prot, "dlq": dlq}


@pytest.fixture(scope="module")
def reads(gw: Run, outputs: dict[str, list[Any]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """The read-side commands, run concurrently."""
    user = _busiest_user_with_email(gw.events)
    commands = {
        "decrypt_user": ("decrypt", "--user", user, "--idle-timeout", READ_IDLE),
        "decrypt_unknown": ("decrypt", "--user", "usr_never_seen", "--idle-timeout", "2"),
        "decrypt_all": ("decrypt", "--idle-timeout", READ_IDLE),
        "dlq": ("dlq", "inspect", "--max", "100", "--idle-timeout", READ_IDLE),
        "dlq_unseal": ("dlq", "inspect", "--max", "100", "--unseal", "--idle-timeout", READ_IDLE),
        "decrypt_idle2": ("decrypt", "--idle-timeout", "2"),
        "dlq_idle2": ("dlq", "inspect", "--idle-timeout", "2"),
    }
    procs = {name: subprocess.Popen(_cli(*args), env=gw.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, text=True)
             for name, args in commands.items()}
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=120)
            done[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    done["user"] = user  # type: ignore[assignment]
    done["expected_ids"] = gw.valid_ids  # type: ignore[assignment]  # what existed when they ran
    return done


def _busiest_user_with_email(events: list[dict[str, Any]]) -> str:
    counts = Counter(e["user_id"] for e in events if e.get("email"))
    user, n = counts.most_common(1)[0]
    assert n >= 2
    return user


def _decrypted(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _check_decrypted_against_input(got: dict[str, Any], original: dict[str, Any]) -> None:
    for f in ENCRYPTED:
        assert got.get(f) == original.get(f), f
    for f in CLEAR:
        assert got.get(f) == original.get(f), f
    assert "referrer" not in got  # dropped by policy
    assert got["user_id"].startswith("tk2_") and got["user_id"] != original["user_id"]  # the default: tk2
    assert got["session_id"].startswith("tk1_") and got["session_id"] != original["session_id"]


# --------------------------------------------------------------------------- tests
def test_readyz_and_exactly_one_output_per_record(gw: Run, outputs: dict[str, list[Any]]) -> None:
    status, body = _get(f"http://127.0.0.1:{gw.port}/readyz")
    assert (status, body) == (200, {"ready": True})
    prot_ids = [orjson.loads(r.value)["event_id"] for r in outputs["protected"]]
    assert sorted(prot_ids) == sorted(e["event_id"] for e in gw.events)
    sources = [orjson.loads(r.value)["source"] for r in outputs["dlq"]]
    assert {s["topic"] for s in sources} == {gw.topics.raw}
    assert len({(s["partition"], s["offset"]) for s in sources}) == len(gw.invalid)


def test_outputs_carry_no_plaintext(gw: Run, outputs: dict[str, list[Any]]) -> None:
    blob = b"\n".join((r.key or b"") + b" " + (r.value or b"") for r in outputs["protected"] + outputs["dlq"])
    leaked = [s for s in gw.secrets if s.encode() in blob]
    assert not leaked, f"{len(leaked)} plaintext values found in the output topics"


def test_decrypt_one_user(gw: Run, reads: dict[str, Any]) -> None:
    r = reads["decrypt_user"]
    assert r.returncode == 0, r.stderr
    user = reads["user"]
    mine = {e["event_id"]: e for e in gw.events if e["user_id"] == user}
    got = _decrypted(r.stdout)
    assert sorted(g["event_id"] for g in got) == sorted(mine)  # exactly that user's events, each once
    token = _pseudonyms(gw).lookup(user)
    for g in got:
        assert g["user_id"] == token
        _check_decrypted_against_input(g, mine[g["event_id"]])
    assert any(g.get("email") for g in got)  # the chosen user has an email, decrypted back
    assert f"# {len(mine)} events decrypted" in r.stderr and "no tk2 pseudonym" not in r.stderr


def test_decrypt_of_someone_never_seen_finds_nothing_and_creates_no_pseudonym(gw: Run, reads: dict[str, Any]) -> None:
    r = reads["decrypt_unknown"]
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "# 0 events decrypted" in r.stderr and "no tk2 pseudonym" in r.stderr
    pseud = _pseudonyms(gw)
    assert pseud.lookup("usr_never_seen") is None
    assert not redis.Redis.from_url(gw.env["STREAMGATE_REDIS_URL"]).exists(pseud.pid_key(pseud.lookup_id("usr_never_seen")))


def _pseudonyms(gw: Run) -> Pseudonyms:
    """The tk2 pseudonyms of the worker's Redis (the master key's)."""
    return Pseudonyms(Keyring.parse(gw.master_key), redis.Redis.from_url(gw.env["STREAMGATE_REDIS_URL"]),
                      gw.env["STREAMGATE_REDIS_KEY_PREFIX"], domain=load_schema("clickstream-event.v1").subject_domain)


def test_decrypt_all_valid_events(gw: Run, reads: dict[str, Any]) -> None:
    r = reads["decrypt_all"]
    assert r.returncode == 0, r.stderr
    got = _decrypted(r.stdout)
    ids = [g["event_id"] for g in got]
    assert len(ids) == len(set(ids))
    assert set(ids) == reads["expected_ids"]
    by_id = {e["event_id"]: e for e in gw.events}
    for g in got:
        if g["event_id"] in by_id:
            _check_decrypted_against_input(g, by_id[g["event_id"]])
    assert "could not be decrypted" not in r.stderr
    # invalid lines never come out of decrypt
    assert "usr_arr" not in r.stdout and "leaky.person" not in r.stdout


_DLQ_LINE = re.compile(r"^(?P<reason>[a-z_]+) +(?P<topic>\S+)\[(?P<part>\d+)\]@(?P<off>\d+) size=(?P<size>\d+)")


def _dlq_listing(stdout: str) -> list[re.Match[str]]:
    return [m for m in map(_DLQ_LINE.match, stdout.splitlines()) if m]


def test_dlq_inspect_lists_reasons_without_plaintext(gw: Run, reads: dict[str, Any]) -> None:
    r = reads["dlq"]
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    listing = _dlq_listing(r.stdout)
    assert len(listing) == len(lines) == len(gw.invalid), r.stdout
    assert Counter((m["reason"], int(m["size"])) for m in listing) == Counter(
        (reason, len(raw)) for reason, raw in gw.invalid)
    assert {m["topic"] for m in listing} == {gw.topics.raw}
    out = r.stdout + r.stderr
    for _, raw in gw.invalid:
        assert raw.decode() not in out
    leaked = [s for s in gw.secrets if s in out]
    assert not leaked, "plaintext of a dead-lettered record in `dlq inspect` output"
    assert "original:" not in out


def test_dlq_inspect_unseal_shows_the_original_bytes(gw: Run, reads: dict[str, Any]) -> None:
    r = reads["dlq_unseal"]
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(_dlq_listing(r.stdout)) == len(gw.invalid)
    originals = [ln.strip() for ln in lines if ln.startswith("    original: ")]
    assert sorted(originals) == sorted(f"original: {raw!r}" for _, raw in gw.invalid)
    # each listing line is followed by its original
    for i, ln in enumerate(lines):
        if _DLQ_LINE.match(ln):
            assert lines[i + 1].startswith("    original: ")


def test_decrypt_short_idle_timeout_still_reads_existing_events(gw: Run, reads: dict[str, Any]) -> None:
    r = reads["decrypt_idle2"]
    assert r.returncode == 0, r.stderr
    assert {g["event_id"] for g in _decrypted(r.stdout)} == reads["expected_ids"], r.stderr


def test_dlq_inspect_short_idle_timeout_still_reads_existing_records(gw: Run, reads: dict[str, Any]) -> None:
    r = reads["dlq_idle2"]
    assert r.returncode == 0, r.stderr
    assert len(_dlq_listing(r.stdout)) == len(gw.invalid), r.stdout


def _wait_health(gw: Run, consumed: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = _get(f"http://127.0.0.1:{gw.port}/healthz")
        assert status == 200, body
        if body["gateway"]["consumed"] >= consumed:
            return body
        time.sleep(0.25)
    pytest.fail(f"/healthz never counted {consumed} consumed records: {body}")


def test_healthz_counts(gw: Run, outputs: dict[str, list[Any]]) -> None:
    n_valid = len(gw.events) + len(gw.generated)
    body = _wait_health(gw, n_valid + len(gw.invalid))
    assert body["ok"] is True
    stats = body["gateway"]
    assert stats["consumed"] == n_valid + len(gw.invalid)
    assert stats["protected"] == n_valid
    assert stats["dead_lettered"] == len(gw.invalid)
    assert stats["reasons"] == dict(Counter(reason for reason, _ in gw.invalid))
    assert stats["fail_closed_retries"] == 0


def test_produce_generate(gw: Run, outputs: dict[str, list[Any]]) -> None:
    r = gw.run("produce", "--generate", "200", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"published 200 records to {gw.topics.raw}\n"
    expected = list(ClickstreamGenerator(seed=3).events(200))
    raw = read_topic(gw.bootstrap, gw.topics.raw, expect=gw.n_lines + 200, timeout=90)
    assert len(raw) == gw.n_lines + 200
    want = {e["event_id"]: e for e in expected}
    seen: Counter[str] = Counter()
    for rec in raw:
        try:
            ev = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(ev, dict) and ev.get("event_id") in want:
            seen[ev["event_id"]] += 1
            assert ev == want[ev["event_id"]]
            assert rec.key == ev["user_id"].encode()  # clicks.raw is keyed by user_id
    assert seen == Counter(dict.fromkeys(want, 1))
    # and the worker protects them (the later tests count them in)
    prot = read_topic(gw.bootstrap, gw.topics.protected, expect=N_EVENTS + 200, timeout=90)
    assert len(prot) == N_EVENTS + 200
    gw.generated = expected
    body = _wait_health(gw, N_EVENTS + 200 + len(gw.invalid))
    assert body["gateway"]["protected"] == N_EVENTS + 200


def test_sigterm_stops_the_worker_cleanly(gw: Run) -> None:
    """Last test of the module: it stops the shared worker."""
    assert gw.proc.poll() is None, f"the worker died early; log:\n{_tail(gw.log)}"
    assert _procs_with(gw.marker) == [gw.proc.pid]  # only the worker itself carries our environment
    gw.proc.send_signal(signal.SIGTERM)
    try:
        code = gw.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within 30 s of SIGTERM; log:\n{_tail(gw.log)}")
    assert code == 0, f"exit code {code}; log:\n{_tail(gw.log)}"
    # no process it started survives it (children, grandchildren, detached ones: all inherit the env)
    left: list[int] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = _procs_with(gw.marker)
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"
    text = gw.log.read_text(errors="replace")
    assert "Traceback" not in text, _tail(gw.log)
    assert "gateway started" in text
    leaked = [s for s in gw.secrets if s in text]
    assert not leaked, "plaintext in the worker log"
    status = None
    with contextlib.suppress(OSError):
        status, _ = _get(f"http://127.0.0.1:{gw.port}/healthz")
    assert status is None  # the web server went with it


def test_gateway_starts_with_a_fresh_state_dir(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, topic_names: TopicNames, master_key_b64: str,
    unique_id: str, tmp_path: Path,
) -> None:
    """Regression: Faust creates only the last level of its datadir (<state_dir>/faust), so a state
    dir that doesn't exist yet (a fresh ~/.streamgate with external Kafka/Redis) used to kill the
    worker at start with FileNotFoundError (fixed in bbcb256)."""
    state_dir = tmp_path / "not" / "yet" / "there"
    port = free_port()
    env = worker_env(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=redis_prefix,
                     master_key=master_key_b64, state_dir=state_dir, topics=topic_names,
                     STREAMGATE_GROUP_PREFIX=f"sgcli-{unique_id}", STREAMGATE_WEB_PORT=str(port))
    log = tmp_path / "gateway.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(_cli("gateway"), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_ready(proc, port, log)
    finally:
        stop_process(proc)
    assert proc.returncode == 0
