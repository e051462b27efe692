"""Clear (``2.``) tk2 secrets, on a real Redis: read as before until ``streamgate keys rewrap-pseudonyms``
wraps them (same token, same expiry) and marks the store; from then on a planted or restored clear
secret is refused (typed, counted) - the attack of a Redis writer planting a secret it knows."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from stream.cli import cli
from stream.components import build_dek_provider, build_pseudonyms
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.crypto.tokens import PseudonymKeys
from stream.errors import KeyUnavailableError, LegacyPseudonymError
from stream.storage.pseudonyms import rewrap_legacy
from tests.support.fixtures import admin_client
from tests.support.workers import settings_env

pytestmark = pytest.mark.integration

E, R = 3600, 7200
T0 = 1_900_000_000.0


def plant_clear(rc, pseud, user_id: str, exat: int) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    """What a writer holding the token key (no KEK) could store: a secret of its choosing, in the clear."""
    secret = os.urandom(32)
    token = pseud.token_from(secret, user_id)
    rc.set(pseud.pid_key(pseud.lookup_id(user_id)), b"2." + token.encode() + b"." + secret, exat=exat)
    return token, secret


def test_clear_secrets_are_rewrapped_then_refused(settings_factory) -> None:
    s = settings_factory(epoch_seconds=E, retention_seconds=R)
    rc = admin_client(s)
    exat = int(T0) + 10 * E
    gateway = build_pseudonyms(s, clock=lambda: T0)
    old, secret = plant_clear(rc, gateway, "usr_old", exat)  # written before the wrap
    assert gateway.tokens(["usr_old"], exat) == [old]  # accepted while the store is not marked
    pid = gateway.pid_key(gateway.lookup_id("usr_old"))
    ttl = rc.expiretime(pid)

    ring = Keyring.from_settings(s)
    counter = build_dek_provider(s, ring, guard=False).wrap_counter
    before = counter.count(ring.primary_id, 0)
    keys = PseudonymKeys(ring, gateway.domain, LocalKMS(ring))
    stats = rewrap_legacy(rc, s.redis_key_prefix, keys, now=T0, wrap_counter=counter)
    assert (stats.scanned, stats.rewrapped, stats.changed) == (1, 1, 0)
    assert counter.count(ring.primary_id, 0) == before + 1  # the wrap counts against the KEK's limit
    raw = rc.get(pid)
    assert raw.startswith(b"3." + old.encode() + b".") and secret not in raw  # wrapped, no longer in the clear
    assert rc.expiretime(pid) == ttl
    fresh = build_pseudonyms(s, clock=lambda: T0)
    assert fresh.tokens(["usr_old"], exat) == [old] and fresh.lookup("usr_old") == old  # same person, same token
    assert rewrap_legacy(rc, s.redis_key_prefix, keys, now=T0).rewrapped == 0  # idempotent

    plant_clear(rc, fresh, "usr_planted", exat)  # the attack, after the migration
    with pytest.raises(LegacyPseudonymError):
        fresh.tokens(["usr_planted"], exat)
    with pytest.raises(KeyUnavailableError):
        fresh.lookup("usr_planted")
    assert fresh.legacy_refused == 2


def test_the_rewrap_command(settings_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_factory(epoch_seconds=E, retention_seconds=R)
    rc = admin_client(s)
    gateway = build_pseudonyms(s, clock=lambda: T0)
    exat = int(T0) + 10 * E
    tokens = [plant_clear(rc, gateway, f"usr_{i}", exat)[0] for i in range(3)]
    for name, value in settings_env(s).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("STREAMGATE_REDIS_PASSWORD_FILE", raising=False)  # the operator: the URL's user
    result = CliRunner().invoke(cli, ["keys", "rewrap-pseudonyms"], prog_name="streamgate")
    assert result.exit_code == 0, result.output
    assert "3 pseudonym secrets seen, 3 clear ones wrapped" in result.output
    assert rc.get(f"{s.redis_key_prefix}:pseudonyms-wrapped") is not None
    assert build_pseudonyms(s, clock=lambda: T0).tokens([f"usr_{i}" for i in range(3)], exat) == tokens
