"""``streamgate demo`` from nothing: no Kafka, no Redis, no master key configured.

The demo must start its own embedded stack and workers, account for every event, show protected
values (tokens / ciphertexts), estimates from the privatizer, an honoured erasure, and leave nothing
running behind it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stream.synth import ClickstreamGenerator
from tests.support.procscan import procs_mentioning

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 2000
SENSITIVE = ("email", "phone", "ip", "shipping_address", "user_id", "session_id")


@pytest.fixture
def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE_")}
    env.update({"STREAMGATE_STATE_DIR": str(tmp_path), "COLUMNS": "160", "PYTHONUNBUFFERED": "1"})
    return env


def test_demo_from_nothing(tmp_path: Path, demo_env: dict[str, str]) -> None:
    for name in ("STREAMGATE_KAFKA_BOOTSTRAP", "STREAMGATE_REDIS_URL", "STREAMGATE_MASTER_KEY",
                 "STREAMGATE_MASTER_KEY_FILE"):
        assert name not in demo_env
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "demo", "--events", str(EVENTS)],
        env=demo_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, start_new_session=True, cwd=tmp_path,  # the cwd marks its processes (environ may be overwritten)
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"demo did not finish within 240 s\n{out}\n{err}")
    finally:
        leftovers = procs_mentioning(str(tmp_path).encode())
        for pid, _ in leftovers:  # only processes of this test mention its tmp_path
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err

    # -- nothing left running: no broker, no redis, no gateway worker of this run
    assert not leftovers, f"processes left behind by the demo: {leftovers}"

    # -- the summary accounts for every event
    assert f"{EVENTS:,} of {EVENTS:,}" in out, out
    accounted = next(line for line in out.splitlines() if "accounted for" in line)
    assert "✓" in accounted and "(!)" not in accounted
    protected = int(re.search(r"protected\s+-> \S+\s*│\s*([\d,]+)", out)[1].replace(",", ""))  # type: ignore[index]
    dead = int(re.search(r"dead-lettered -> \S+\s*│\s*([\d,]+)", out)[1].replace(",", ""))  # type: ignore[index]
    assert protected + dead == EVENTS
    assert 0 < dead < EVENTS * 0.1  # default invalid rate 2 %

    # -- its workers ran as their Redis ACL users (stream/storage/acl.py) and did their work
    assert "connect as their ACL users" in out, out

    # -- the decrypt check passed
    check = [line for line in out.splitlines() if "decrypting with the master key" in line]
    assert len(check) == 1 and "✓" in check[0] and "✗" not in check[0], out

    # -- the privatizer's side: reports, estimates beside the truth, then the erasure is honoured
    assert "local differential privacy (privatizer)" in out
    n_features = int(re.search(r"feature reports -> \S+\s*│\s*([\d,]+)", out)[1].replace(",", ""))  # type: ignore[index]
    assert 0 < n_features <= protected
    # one-round reports at the demo's per-report epsilon (2 = its schema epsilon 4 / 2)
    assert re.search(r"event_type\s+\((GRR|OUE), eps=2(\.0)?, n=", out) and re.search(r"category\s+\(OUE, eps=2", out)
    # the truth is shown (its population is the estimates': every report in a published window)
    assert "page_view" in out and "true mean price (absent = 0) of the same events" in out, out
    n_event_type = int(re.search(r"event_type\s+\(\w+, eps=[\d.]+, n=([\d,]+)", out)[1].replace(",", ""))  # type: ignore[index]
    assert n_event_type == n_features
    erased = [line for line in out.splitlines() if "the same event now reads" in line]
    assert len(erased) == 1 and "✓" in erased[0] and "[shredded]" in erased[0], out
    assert "erasure receipt on ops.audit: status completed" in out

    # -- the learner: every labelled example learned, a signed snapshot loaded, scored on the truth
    assert "online learning on the private stream (learner, River)" in out
    learned = re.search(r"demo-\S+: ([\d,]+) examples learned, signed", out)
    assert learned, out
    people = len({e["user_id"] for e in ClickstreamGenerator(seed=0).events(EVENTS)})  # the demo's default seed
    assert int(learned[1].replace(",", "")) == people  # one joint example per person and epoch
    truth_auc = float(re.search(r"true labels \(demo only\)\s*│\s*ROC-AUC ([\d.]+)", out)[1])  # type: ignore[index]
    assert 0.0 <= truth_auc <= 1.0
    assert ("privacy in this demo: epsilon 2 per attribute of each report (fresh noise, no memo), "
            "at most 96 per person per day") in out  # stated
    assert re.search(r"largest weights\s*│\s*[a-z_]+=\S+ [+-]\d", out), out

    # -- the logs directory is named and exists, with the gateway's log in it
    m = re.search(r"^logs: (\S+)", out, re.M)
    assert m, out
    logs = Path(m[1])
    assert logs.is_dir() and logs.is_relative_to(tmp_path)
    assert (logs / "gateway.log").is_file()

    # -- the protected panel shows tokens and ciphertexts
    assert "tk2_" in out and "sg1." in out
    # person tokens are tk2 by default (unlinked on erasure); session tokens stay tk1
    assert re.search(r'"user_id": "tk2_', out) and re.search(r'"session_id": "tk1_', out)

    # -- no sensitive plaintext except the one raw sample shown on purpose (each of its values once)
    events = list(ClickstreamGenerator(seed=0).events(EVENTS))  # the demo's default seed
    sample_id = re.search(r"recovers every encrypted field of event (\S+)", out)[1]  # type: ignore[index]
    sample = next(e for e in events if e["event_id"] == sample_id)
    for f in ("email", "ip", "user_id", "session_id"):
        value = sample.get(f)
        if isinstance(value, str):
            assert out.count(value) == 1, f"the sample's {f} appears {out.count(value)} times"
    sample_values = {sample.get(f) for f in SENSITIVE}
    leaked = {(e["event_id"], f) for e in events for f in SENSITIVE
              if isinstance(e.get(f), str) and e[f] not in sample_values and e[f] in out + err}
    assert not leaked, f"plaintext of {len(leaked)} sensitive values in the demo output"
    worker_logs = "".join((logs / f"{w}.log").read_text(errors="replace")
                          for w in ("gateway", "privatizer", "learner", "shredder"))
    leaked_log = {(e["event_id"], f) for e in events for f in SENSITIVE
                  if isinstance(e.get(f), str) and e[f] in worker_logs}
    assert not leaked_log, "plaintext in the demo's worker logs"

    # -- the dev stack is reported as not running, both for the state dir and for the demo's own stack
    for state_dir in (tmp_path, logs / "stack"):
        status = subprocess.run(
            [sys.executable, "-m", "stream.cli", "dev", "status"],
            env={**demo_env, "STREAMGATE_STATE_DIR": str(state_dir)},
            capture_output=True, text=True, timeout=60,
        )
        assert status.returncode == 3, (state_dir, status.stdout, status.stderr)
        assert status.stdout.startswith("not running"), status.stdout
    assert (logs / "stack").is_dir()  # the demo's stack did live there
    assert not (logs / "stack" / "dev" / "stack.json").exists()
