"""What a copy of Redis taken before an erasure (DUMP, AOF, RDB, backup) can do with a person's tk2
secret afterwards, attacked with every credential (issue 25). Real Redis; the erasure is the
shredder's.

The secret is wrapped by the KEK and bound to its key name and token, so: the copy holds no secret in
the clear; no credential without the lookup key (reader, privatizer, learner, eraser, verifier) can
find the person in it; a value moved to another person's key does not open. But the copy still links
the lookup id to the token, so whoever holds the lookup key (gateway, shredder, master keyring)
relinks the erased person's token from the copy for as long as it lives: docs/privacy.md."""

from __future__ import annotations

import pytest

from stream.components import build_pseudonyms, redis_client
from stream.crypto.keyring import PSEUDONYM_PURPOSES, ROLES, Keyring
from stream.crypto.kms import LocalKMS
from stream.errors import KeyringError, KeyUnavailableError
from stream.retention.core import MemorySink, Shredder
from stream.storage.pseudonyms import Pseudonyms
from stream.storage.retention import RedisShredStore
from tests.support.fixtures import admin_client
from tests.support.shred import Clock

pytestmark = pytest.mark.integration

E, R = 3600, 7200
T0 = 1_900_000_000.0


def test_a_dump_taken_before_erasure_relinks_only_with_the_lookup_key(settings_factory) -> None:
    s = settings_factory(epoch_seconds=E, retention_seconds=R)
    ring = Keyring.from_settings(s)
    rc = admin_client(s)  # the backup taker
    gateway = build_pseudonyms(s, ring.for_role("gateway", person_domain="user_id"))
    domain = gateway.domain
    exat = int(T0) + 10 * E
    tok, tok_bob = gateway.tokens(["usr_alice", "usr_bob"], exat)
    pid, pid_bob = (gateway.pid_key(gateway.lookup_id(u)) for u in ("usr_alice", "usr_bob"))
    ptok = gateway.ptok_key(tok)
    dump = {name: rc.dump(name) for name in (pid, ptok)}  # the backup, taken before the erasure
    raw = rc.get(pid)
    secret = LocalKMS(ring).unwrap(raw[len(tok) + 3:], gateway.keys._aad(pid, tok))
    assert len(secret) == 32 and gateway.keys.token_from(secret, "usr_alice") == tok

    store = RedisShredStore(redis_client(s, "shredder"), s.redis_key_prefix)
    Shredder(store, MemorySink(), worker="w1", epoch_seconds=E, retention_seconds=R,
             clock=Clock(T0)).erase(tok, "req-backup")
    assert rc.get(pid) is None and rc.get(ptok) is None  # Redis itself no longer links
    assert build_pseudonyms(s, ring).lookup("usr_alice") is None

    # the attacker restores the copy (here into the live server, under its own names)
    for name, value in dump.items():
        rc.restore(name, 0, value, replace=True)
    copy = rc.get(pid)

    # 1. no key at all: the copy holds no secret in the clear, only a keyed lookup id and a token
    assert secret not in b"".join(dump.values()) and secret not in copy

    # 2. credentials without the lookup key cannot find the person's entry, nor compute a token
    lookup_purpose, token_purpose = PSEUDONYM_PURPOSES
    for role, spec in ROLES.items():
        if spec.tokens:
            continue
        cred = ring.for_role(role, person_domain=domain)
        for purpose in (lookup_purpose, token_purpose):
            with pytest.raises(KeyringError):
                cred.derive(purpose + domain)
    # the reader unwraps data keys, hence the secret too (same KEK), but holds no token key
    reader = ring.for_role("reader", person_domain=domain)
    assert LocalKMS(reader).unwrap(copy[len(tok) + 3:], gateway.keys._aad(pid, tok)) == secret
    with pytest.raises(KeyringError):
        Pseudonyms(reader, rc, s.redis_key_prefix, domain=domain)

    # 3. the lookup key relinks from the copy: the shredder (no KEK: it reads the token the value names)
    #    and the gateway or master keyring (unwrap and verify). This is what a backup can do.
    shredder_view = Pseudonyms(ring.for_role("shredder", person_domain=domain), rc, s.redis_key_prefix,
                               domain=domain)
    assert shredder_view.keys.kms is None
    assert shredder_view.lookup("usr_alice") == tok
    assert build_pseudonyms(s, ring).lookup("usr_alice") == tok

    # 4. a wrapped secret moved to another person's key does not open there (bound to its key name)
    rc.restore(pid_bob, 0, dump[pid], replace=True)
    fresh = build_pseudonyms(s, ring)
    with pytest.raises(KeyUnavailableError, match="does not open"):
        fresh.tokens(["usr_bob"], exat)
    with pytest.raises(KeyUnavailableError):
        fresh.lookup("usr_bob")
    assert tok_bob != tok
