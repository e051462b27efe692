"""Role credentials (RoleKeyring): a strict subset of the master keyring's derived keys, never a raw
KEK; the file round-trips at mode 0600; malformed files fail by shape, never echoing content; nothing
outside the role can be derived; known-answer vectors pin the role derivations to the master's."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from stream.crypto.keyring import PSEUDONYM_PURPOSES, ROLES, WRAP_PURPOSE, Keyring, RoleKeyring, derive_key
from stream.errors import KeyringError

MASTER = Keyring([("root", bytes(range(32)), None), ("newer", bytes(range(32, 64)), None)])


def test_role_keys_are_the_masters_derivations() -> None:
    gw = MASTER.for_role("gateway", token_domains=["user_id"], person_domain="user_id")
    assert gw.ids == ("root", "newer") and gw.primary_id == "newer" and gw.root_id == "root"
    for kek_id, raw in (("root", bytes(range(32))), ("newer", bytes(range(32, 64)))):
        assert gw.kek_derive(kek_id, WRAP_PURPOSE) == derive_key(raw, "dek-wrap")
    assert gw.derive("token/user_id") == derive_key(bytes(range(32)), "token/user_id")
    assert gw.derive("dek-id") == MASTER.derive("dek-id")
    sh = MASTER.for_role("shredder", token_domains=["user_id"], person_domain="user_id")
    assert sh.public_key("erasure") == MASTER.public_key("erasure")
    assert sh.public_key("receipt") == MASTER.public_key("receipt")  # from its own seed
    for cred in (gw, sh):  # tk2 person tokens (stream.crypto.tokens.Pseudonyms): the same keys as the master's
        for purpose in ("pseudonym-lookup/user_id", "token2/user_id"):
            assert cred.derive(purpose) == derive_key(bytes(range(32)), purpose)


@pytest.mark.parametrize("role", list(ROLES))
def test_only_the_gateway_and_the_shredder_hold_tk2_keys_and_only_of_the_person_domain(role: str) -> None:
    cred = MASTER.for_role(role, token_domains=["user_id", "session_id"], person_domain="user_id")
    tk2 = [p + "user_id" for p in PSEUDONYM_PURPOSES]
    if role in ("gateway", "shredder"):
        assert [cred.derive(p) for p in tk2] == [MASTER.derive(p) for p in tk2]
    else:  # the reader too: it unwraps, but cannot link a user_id to a token (no `decrypt --user`)
        for p in tk2:
            with pytest.raises(KeyringError, match=f"{role} credential"):
                cred.derive(p)
    for p in PSEUDONYM_PURPOSES:  # other token domains stay tk1: no tk2 keys for them
        with pytest.raises(KeyringError):
            cred.derive(p + "session_id")


@pytest.mark.parametrize("role", list(ROLES))
def test_only_the_privatizer_and_the_gateway_hold_the_ledger_key(role: str) -> None:
    """The gateway exhausts the ledgers of a person returning after an erasure (stream.ldp.ledger)."""
    cred = MASTER.for_role(role, token_domains=["user_id"], person_domain="user_id")
    if role in ("privatizer", "gateway"):
        assert cred.derive("ldp-ledger") == MASTER.derive("ldp-ledger")
    else:
        with pytest.raises(KeyringError, match=f"{role} credential"):
            cred.derive("ldp-ledger")


def test_nothing_outside_the_role_is_available() -> None:
    reader = MASTER.for_role("reader", token_domains=["user_id"], person_domain="user_id")
    for call in (lambda: reader.kek("root"), lambda: reader.derive("token/user_id"),
                 lambda: reader.derive("pseudonym-lookup/user_id"), lambda: reader.derive("ldp-memo"),
                 lambda: reader.derive("sign/erasure"), lambda: reader.public_key("snapshot"),
                 lambda: reader.derive("dek-id", 16), lambda: reader.rotated()):
        with pytest.raises(KeyringError) as info:
            call()
        assert "reader credential" in str(info.value) or "rotate" in str(info.value)
    verifier = MASTER.for_role("verifier")
    with pytest.raises(KeyringError):
        _ = verifier.primary_id
    with pytest.raises(KeyringError):
        MASTER.for_role("superuser")


@pytest.mark.parametrize("role", list(ROLES))
def test_role_files_round_trip_at_0600_without_raw_keks(role: str, tmp_path: Path) -> None:
    cred = MASTER.for_role(role, token_domains=["user_id", "session_id"], person_domain="user_id")
    path = tmp_path / f"{role}.json"
    cred.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for raw in (bytes(range(32)), bytes(range(32, 64))):
        assert base64.b64encode(raw).decode() not in text
    back = Keyring.load(path)
    assert isinstance(back, RoleKeyring) and back.role == role and back.ids == cred.ids
    spec = ROLES[role]
    for purpose in [*spec.purposes, *([p + "user_id" for p in PSEUDONYM_PURPOSES] if spec.tokens else [])]:
        assert back.derive(purpose) == MASTER.derive(purpose)
    for name in spec.public:
        assert back.public_key(name) == MASTER.public_key(name)
    assert "RoleKeyring" in repr(back) and base64.b64encode(bytes(range(32))).decode() not in repr(back)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(back)


def test_malformed_role_files_fail_by_shape(tmp_path: Path) -> None:
    secret = base64.b64encode(b"s" * 32).decode()
    for doc in ({"version": 2, "role": "gateway"},
                {"version": 2, "role": "nobody", "root_id": "r", "keks": [], "keys": {}, "public": {}},
                {"version": 2, "role": "eraser", "root_id": "r", "keys": {"sign/erasure": secret[:-4]}},
                {"version": 2, "role": "eraser", "root_id": "r", "keks": [{"id": "x"}], "keys": {}}):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(KeyringError) as info:
            Keyring.load(path)
        assert secret[:-4] not in str(info.value)
