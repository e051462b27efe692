"""The retention CLI end to end on the real broker and Redis: ``streamgate topics apply`` (dry run,
create, idempotent re-apply, update, refusal of segment.ms > retention.ms), ``streamgate shredder``
as a real worker process (/healthz, /readyz, clean SIGTERM stop), ``streamgate erase --wait`` and
``streamgate audit`` with its filters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.components import build_dek_provider, build_gateway, person_tokens
from stream.config import TopicNames
from stream.crypto.keyring import Keyring
from stream.dev.stack import free_port
from stream.schema import output_validator
from tests.support.kafka import read_topic
from tests.support.shred import Clock, produce, protect
from tests.support.workers import settings_env, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream.cli", *args]


def _run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(*args), env=env, capture_output=True, text=True, timeout=timeout)


def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (fut,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return {k: e.value for k, e in fut.result(10).items()}


def test_topics_apply_creates_updates_and_is_idempotent(settings_factory, tmp_path: Path) -> None:
    settings = settings_factory()
    env = settings_env(settings)
    dry = _run(env, "topics", "apply", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"create    {settings.topics.raw}" in dry.stdout and "retention.ms: - -> 86400000" in dry.stdout
    n = len(TopicNames.model_fields)  # every topic of the contract
    assert f"{n} topics, {n} would change" in dry.stderr
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    assert settings.topics.raw not in admin.list_topics(timeout=10).topics  # a dry run changes nothing

    applied = _run(env, "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    raw = _configs(settings.kafka_bootstrap, settings.topics.raw)
    assert (raw["retention.ms"], raw["segment.ms"], raw["cleanup.policy"]) == ("86400000", "3600000", "delete")
    snaps = _configs(settings.kafka_bootstrap, settings.topics.snapshots)
    assert snaps["cleanup.policy"] == "compact"
    md = admin.list_topics(timeout=10).topics
    assert len(md[settings.topics.raw].partitions) == 4 and len(md[settings.topics.audit].partitions) == 1

    again = _run(env, "topics", "apply")
    assert again.returncode == 0 and f"{n} topics, 0 changed" in again.stderr, again.stderr

    from stream.storage.topics import default_topics_config

    changed = tmp_path / "topics.yaml"
    changed.write_text(default_topics_config().read_text().replace(
        "retention.ms: 86400000, segment.ms: 3600000", "retention.ms: 43200000, segment.ms: 1800000"))
    upd = _run(env, "topics", "apply", "--config", str(changed))
    assert upd.returncode == 0, upd.stderr
    assert "update    " + settings.topics.raw in upd.stdout and "retention.ms: 86400000 -> 43200000" in upd.stdout
    assert _configs(settings.kafka_bootstrap, settings.topics.raw)["segment.ms"] == "1800000"

    bad = tmp_path / "bad.yaml"
    bad.write_text("topics:\n  raw: {config: {cleanup.policy: delete, retention.ms: 1000, segment.ms: 5000}}\n")
    refused = _run(env, "topics", "apply", "--config", str(bad))
    assert refused.returncode == 1 and "segment.ms > retention.ms" in refused.stderr


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_shredder_worker_erase_wait_and_audit(settings_factory, unique_id: str) -> None:
    settings = settings_factory()
    port = free_port()
    env = settings_env(settings, STREAMGATE_WEB_PORT=str(port), STREAMGATE_GROUP_PREFIX=f"sgcli-shred-{unique_id}",
               STREAMGATE_SHREDDER_INSTANCE_ID="cli-shredder", STREAMGATE_SHREDDER_INTERVAL_SECONDS="0.5",
               STREAMGATE_METRICS_INTERVAL_SECONDS="1")
    # protected events of the person and of someone else on clicks.protected (the gateway's core)
    events = protect(settings, Clock(time.time()), ["usr_cli_forget", "usr_cli_keep"], 2,
                     gateway=build_gateway(settings))
    produce(settings.kafka_bootstrap, settings.topics.protected,
            [(ev["user_id"].encode(), json.dumps(ev).encode()) for ev in events])
    # the person's tk2 token (the default) has data keys of two epochs before the erasure
    token = events[0]["user_id"]
    assert token.startswith("tk2_") and person_tokens(settings, "usr_cli_forget", legacy=False) == [token]
    provider = build_dek_provider(settings)
    e = provider.epoch_of(time.time())
    provider.keys_for([token], e - 1)

    log = settings.state_dir / "shredder.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(_cli("shredder"), env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if _get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.25)
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and body["ok"] is True and body["shredder"]["ticks"] >= 1

        erased = _run(env, "erase", "--user", "usr_cli_forget", "--request-id", "cli-req-1", "--wait",
                      "--timeout", "60")
        assert erased.returncode == 0, erased.stderr
        assert f"request_id=cli-req-1 subject={token}" in erased.stdout
        assert "completed keys=2" in erased.stdout and "usr_cli_forget" not in erased.stdout
        assert "no shredder is running" not in erased.stderr  # the running one is seen
        again = _run(env, "erase", "--user", "usr_cli_forget", "--request-id", "cli-req-1", "--wait",
                     "--timeout", "60")
        assert again.returncode == 0 and "completed keys=2" in again.stdout, again.stderr
        nobody = _run(env, "erase", "--subject", "tokNobody", "--wait", "--timeout", "60")
        assert nobody.returncode == 0 and "completed keys=0" in nobody.stdout, nobody.stderr

        # consumers after the shred: a replacement value, never a crash
        for mode, expected in (("null", None), ("mask", "[shredded]")):
            dec = _run(env, "decrypt", "--on-shredded", mode, "--idle-timeout", "2")
            assert dec.returncode == 0, dec.stderr
            out = [json.loads(line) for line in dec.stdout.splitlines()]
            assert len(out) == 4 and "4 events decrypted" in dec.stderr
            assert [ev["email"] for ev in out if ev["user_id"] == token] == [expected, expected]
            assert all(ev["email"].endswith("@example.org") for ev in out if ev["user_id"] != token)
        strict = _run(env, "decrypt", "--on-shredded", "raise", "--idle-timeout", "2")
        assert strict.returncode == 0 and "2 events decrypted, 2 could not be decrypted" in strict.stderr

        # unlinked: the user_id no longer leads to the receipts of its erased token, the token itself does
        unlinked = _run(env, "audit", "--user", "usr_cli_forget", "--json")
        assert unlinked.returncode == 0 and unlinked.stdout == "", unlinked.stderr
        assert person_tokens(settings, "usr_cli_forget", legacy=False) == []
        audit = _run(env, "audit", "--subject", token, "--json")
        assert audit.returncode == 0, audit.stderr
        receipts = [json.loads(line) for line in audit.stdout.splitlines()]
        valid = output_validator("audit-receipt.v1")
        assert not any(valid(r) for r in receipts)
        assert sorted(r["kind"] for r in receipts) == ["erasure", "key_shredded", "key_shredded"]
        assert {r["epoch"] for r in receipts if r["kind"] == "key_shredded"} == {e, e - 1}
        # the second `erase` re-signed cli-req-1 with another requested_at: other content, refused
        repeated = _run(env, "audit", "--request-id", "cli-req-1", "--json")
        kinds = [(r["kind"], r.get("error")) for r in map(json.loads, repeated.stdout.splitlines())]
        assert kinds.count(("erasure_rejected", "request_id_conflict")) == 1, kinds

        text = _run(env, "audit", "--reason", "erasure", "--since", "1h")
        assert text.returncode == 0 and text.stdout.count("erasure") >= 4 and "tokNobody" in text.stdout
        assert _run(env, "audit", "--until", "2000-01-01T00:00:00Z").stdout == ""
        one = _run(env, "audit", "--max", "1", "--json")
        assert len(one.stdout.splitlines()) == 1
        assert _run(env, "audit", "--reason", "retention").stdout == ""
        assert _run(env, "audit", "--since", "yesterday").returncode == 2
        assert "usr_cli_forget" not in log.read_text()
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert b"\x1b" not in log.read_bytes()  # no terminal escapes (Faust's spinner) in a log file


def test_erase_signs_with_the_eraser_credential_alone(settings_factory, tmp_path: Path) -> None:
    """No key, no erasure; the eraser credential (no KEK, no token key) is enough to publish a
    request that verifies with the master keyring's erasure key."""
    from stream.crypto.signing import verify_key
    from stream.retention.core import ErasureRejectedError, parse_erasure_request

    settings = settings_factory()
    master = Keyring.from_settings(settings)
    master.for_role("eraser").save(tmp_path / "eraser.json")
    env = settings_env(settings)
    env.pop("STREAMGATE_MASTER_KEY")
    refused = _run(env, "erase", "--user", "usr_no_key", "--request-id", "nokey-0")
    assert refused.returncode == 1 and "no master key configured" in refused.stderr
    env["STREAMGATE_KEY_FILE"] = str(tmp_path / "eraser.json")
    env["STREAMGATE_DEPLOYMENT_ID"] = "prod-eu"
    done = _run(env, "erase", "--user", "usr_no_kek", "--request-id", "nokek-1")
    assert done.returncode == 0, done.stderr
    assert "request_id=nokek-1" in done.stdout and "token not shown" in done.stdout
    assert "no shredder is running" in done.stderr and "streamgate shredder" in done.stderr
    (rec,) = read_topic(settings.kafka_bootstrap, settings.topics.erasure, expect=1)
    body = json.loads(rec.value)
    assert rec.key == b"usr_no_kek" and set(body) == {"request_id", "user_id", "requested_at", "audience", "signer",
                                                      "signature"}
    assert body["audience"] == "prod-eu"  # signed for this deployment only
    with pytest.raises(ErasureRejectedError, match="another deployment"):
        parse_erasure_request(rec.value, verify_key(master, "erasure"), audience="staging")
    req = parse_erasure_request(rec.value, verify_key(master, "erasure"), audience="prod-eu")
    assert (req.request_id, req.user_id) == ("nokek-1", "usr_no_kek")
    bad = _run(env, "erase", "--user", "u", "--subject", "t")
    assert bad.returncode == 2 and "exactly one of --user, --subject" in bad.stderr
    bad_id = _run(env, "erase", "--user", "u", "--request-id", "has space")
    assert bad_id.returncode == 1 and "request_id must be" in bad_id.stderr


def test_audit_flags_forged_and_unsigned_receipts(settings_factory, tmp_path: Path) -> None:
    """A forged receipt (altered, or signed by another key) and an unsigned one written to ops.audit
    are left out of `streamgate audit`, or shown marked UNVERIFIED with --all; a forged copy that
    reuses a real receipt's id cannot hide the real one. Verifying needs only the verifier credential."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from stream.crypto.signing import signing_key
    from stream.retention.receipts import erasure_receipt, key_receipt, sign_receipt

    settings = settings_factory()
    master = Keyring.from_settings(settings)
    master.for_role("verifier").save(tmp_path / "verifier.json")
    key = signing_key(master, "receipt")  # what the shredder signs with
    real = sign_receipt(key_receipt(reason="erasure", subject="tk1_Real", epoch=3, key_id="0123456789abcdef",
                                    request_id="r-1", at=time.time(), worker="shredder-1", deadline=None), key)
    summary = sign_receipt(erasure_receipt(subject="tk1_Real", request_id="r-1", at=time.time(), worker="shredder-1",
                                           keys_shredded=1), key)
    altered = dict(real, subject="tk1_Framed")  # same receipt_id and signature, other content
    foreign = sign_receipt(dict(real, subject="tk1_Other"), Ed25519PrivateKey.generate())
    unsigned = {k: v for k, v in dict(real, subject="tk1_Unsigned").items() if k not in ("signer", "signature")}
    topic = settings.topics.audit
    from stream.kafka import ensure_topics

    ensure_topics(settings.kafka_bootstrap, [topic], partitions=1)  # one partition: the order below holds
    produce(settings.kafka_bootstrap, topic,
            [(None, json.dumps(r).encode()) for r in (altered, unsigned, real, summary, foreign, real)])
    env = settings_env(settings)
    env.pop("STREAMGATE_MASTER_KEY")
    env["STREAMGATE_KEY_FILE"] = str(tmp_path / "verifier.json")
    out = _run(env, "audit", "--json")
    assert out.returncode == 0, out.stderr
    shown = [json.loads(line) for line in out.stdout.splitlines()]
    assert shown == [real, summary]
    assert "3 UNVERIFIED (unsigned or forged) left out" in out.stderr and "1 re-delivered" in out.stderr
    marked = _run(env, "audit", "--all")
    assert marked.returncode == 0, marked.stderr
    lines = marked.stdout.splitlines()
    assert len(lines) == 5
    assert sum(line.startswith("UNVERIFIED") for line in lines) == 3
    assert all(line.startswith("verified") for line in lines if "tk1_Real" in line)
    assert all("tk1_Real" not in line for line in lines if line.startswith("UNVERIFIED"))
    as_json = [json.loads(line) for line in _run(env, "audit", "--all", "--json").stdout.splitlines()]
    assert [r["verified"] for r in as_json] == [False, False, True, True, False]
    env.pop("STREAMGATE_KEY_FILE")
    no_key = _run(env, "audit")
    assert no_key.returncode == 1 and "no master key configured" in no_key.stderr
