"""Least privilege end to end on the real broker and Redis: each command runs with its own role's
credential alone (STREAMGATE_KEY_FILE, no master key) and fails clearly with another role's:
`decrypt` with the reader's, `model show` with the verifier's (signed by the learner's key)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream.crypto.keyring import ROLES, Keyring
from stream.schema import load_schema
from tests.support.shred import Clock, produce, protect
from tests.support.workers import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_commands_need_only_their_own_role(settings_factory, tmp_path: Path) -> None:
    import time

    from stream.apps.learner import fresh_model, snapshot_key
    from stream.kafka import ensure_topics
    from stream.learn.snapshot import ModelSnapshot

    settings = settings_factory()
    master = Keyring.from_settings(settings)
    schema = load_schema(settings.schema_name)
    domains = sorted({f.token_domain for f in schema.fields.values() if f.token_domain})
    for role in ROLES:
        master.for_role(role, token_domains=domains, person_domain=schema.subject_domain).save(tmp_path / f"{role}.json")
    gateway = settings.model_copy(update={"master_key": None, "key_file": tmp_path / "gateway.json"})
    events = protect(gateway, Clock(time.time()), ["usr_role_a", "usr_role_b"], 2)
    ensure_topics(settings.kafka_bootstrap, [settings.topics.protected, settings.topics.snapshots], partitions=1)
    produce(settings.kafka_bootstrap, settings.topics.protected,
            [(ev["user_id"].encode(), json.dumps(ev).encode()) for ev in events])
    learner = settings.model_copy(update={"master_key": None, "key_file": tmp_path / "learner.json"})
    snap = ModelSnapshot.capture(fresh_model(learner), metrics={}, label_epsilon=1.0, feature_epsilon={})
    produce(settings.kafka_bootstrap, settings.topics.snapshots,
            [(settings.learn_model_name.encode(), snap.to_bytes(snapshot_key(learner)))])

    env = settings_env(settings)
    env.pop("STREAMGATE_MASTER_KEY")

    def as_role(role: str) -> dict[str, str]:
        return dict(env, STREAMGATE_KEY_FILE=str(tmp_path / f"{role}.json"))

    dec = _run(as_role("reader"), "decrypt", "--idle-timeout", "2")
    assert dec.returncode == 0, dec.stderr
    out = [json.loads(line) for line in dec.stdout.splitlines()]
    assert len(out) == 4 and all(ev["email"].endswith("@example.org") for ev in out)
    # the reader cannot link a user_id to its token (tk2 lookup key withheld): no `decrypt --user`
    by_user = _run(as_role("reader"), "decrypt", "--user", "usr_role_a", "--idle-timeout", "2")
    assert by_user.returncode == 1, by_user.stderr
    assert "reader credential does not hold the 'pseudonym-lookup/user_id' key" in by_user.stderr
    for role in ("eraser", "verifier", "learner", "shredder"):
        denied = _run(as_role(role), "decrypt", "--idle-timeout", "2")
        assert denied.returncode == 1 and f"the {role} credential" in denied.stderr, (role, denied.stderr)
        assert "@example.org" not in denied.stdout

    shown = _run(as_role("verifier"), "model", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["verified"] is True
    for role in ("eraser", "reader"):  # no snapshot public key: the header only, marked unverified
        header_only = _run(as_role(role), "model", "show", "--json")
        assert header_only.returncode == 0 and json.loads(header_only.stdout)["verified"] is False
