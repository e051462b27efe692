"""``streamgate keys generate``: the keyring file, rotation, refusing to overwrite, no key material printed."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from stream.cli import cli
from stream.crypto.keyring import Keyring


def _run(args: list[str], monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> Result:
    for name in ("STREAMGATE_MASTER_KEY", "STREAMGATE_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMGATE_STATE_DIR", str(state_dir))
    return CliRunner().invoke(cli, args, prog_name="streamgate")


def _key_strings(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    return [k["key"] for k in doc["keys"]]


def _ids(path: Path) -> list[str]:
    return [k["id"] for k in json.loads(path.read_text())["keys"]]


def _assert_no_key_material(output: str, path: Path) -> None:
    for b64 in _key_strings(path):
        raw = base64.b64decode(b64)
        for form in (b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()):
            assert form not in output, "key material printed"


def _output(result: Result) -> str:
    return result.output + (result.stderr or "")


def test_generate_writes_a_0600_keyring_and_prints_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "secrets" / "ring.json"
    result = _run(["keys", "generate", "--out", str(out)], monkeypatch, tmp_path)
    assert result.exit_code == 0, _output(result)
    assert out.exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    ring = Keyring.load(out)  # a valid keyring
    assert len(ring.ids) == 1
    assert ring.ids[0] in result.output  # ids are public and printed
    assert f"STREAMGATE_MASTER_KEY_FILE={out}" in result.output
    _assert_no_key_material(_output(result), out)
    # no stray temporary files next to it
    assert sorted(p.name for p in out.parent.iterdir()) == ["ring.json"]


def test_generate_default_path_is_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(["keys", "generate"], monkeypatch, tmp_path)
    assert result.exit_code == 0, _output(result)
    path = tmp_path / "keyring.json"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _assert_no_key_material(_output(result), path)


def test_two_generates_make_different_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _run(["keys", "generate", "--out", str(a)], monkeypatch, tmp_path).exit_code == 0
    assert _run(["keys", "generate", "--out", str(b)], monkeypatch, tmp_path).exit_code == 0
    assert _key_strings(a) != _key_strings(b)
    assert _ids(a) != _ids(b)


def test_rotate_adds_a_newest_key_and_keeps_the_old_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ring.json"
    assert _run(["keys", "generate", "--out", str(out)], monkeypatch, tmp_path).exit_code == 0
    ids0, keys0 = _ids(out), _key_strings(out)

    r1 = _run(["keys", "generate", "--out", str(out), "--rotate"], monkeypatch, tmp_path)
    assert r1.exit_code == 0, _output(r1)
    ids1, keys1 = _ids(out), _key_strings(out)
    assert len(ids1) == 2
    assert ids1[:1] == ids0 and keys1[:1] == keys0  # the old key is still there, unchanged, oldest first
    assert ids1[1] not in ids0
    assert f"newest wraps: {ids1[1]}" in r1.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    _assert_no_key_material(_output(r1), out)

    r2 = _run(["keys", "generate", "--out", str(out), "--rotate"], monkeypatch, tmp_path)
    assert r2.exit_code == 0, _output(r2)
    ids2 = _ids(out)
    assert len(ids2) == 3 and ids2[:2] == ids1
    assert len(set(_key_strings(out))) == 3
    ring = Keyring.load(out)
    assert ring.primary_id == ids2[-1] and ring.root_id == ids0[0]
    _assert_no_key_material(_output(r2), out)


def test_refuses_to_overwrite_without_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ring.json"
    assert _run(["keys", "generate", "--out", str(out)], monkeypatch, tmp_path).exit_code == 0
    before = out.read_bytes()

    refused = _run(["keys", "generate", "--out", str(out)], monkeypatch, tmp_path)
    assert refused.exit_code == 1, _output(refused)
    assert "refusing to overwrite" in _output(refused)
    assert "Traceback" not in _output(refused)
    assert out.read_bytes() == before  # untouched

    forced = _run(["keys", "generate", "--out", str(out), "--force"], monkeypatch, tmp_path)
    assert forced.exit_code == 0, _output(forced)
    assert out.read_bytes() != before
    assert len(_ids(out)) == 1
    assert _key_strings(out)[0] != json.loads(before)["keys"][0]["key"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    _assert_no_key_material(_output(forced), out)


def test_rotate_of_a_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "nope.json"
    result = _run(["keys", "generate", "--out", str(out), "--rotate"], monkeypatch, tmp_path)
    assert result.exit_code == 1
    assert "does not exist" in _output(result)
    assert "Traceback" not in _output(result)
    assert not out.exists()


# --------------------------------------------------------------------------- role credentials
def _roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str, key_env: dict[str, str]) -> Result:
    for name in ("STREAMGATE_MASTER_KEY", "STREAMGATE_MASTER_KEY_FILE", "STREAMGATE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in key_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("STREAMGATE_STATE_DIR", str(tmp_path))
    return CliRunner().invoke(cli, ["keys", "roles", *args], prog_name="streamgate")


def test_roles_issue_least_privilege_credentials_that_interoperate(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.crypto.keyring import ROLES, RoleKeyring
    from stream.crypto.kms import LocalKMS
    from stream.crypto.signing import sign, signing_key, verify, verify_key
    from stream.crypto.tokens import Tokenizer
    from stream.errors import KeyringError
    from stream.storage.pseudonyms import Pseudonyms

    ring_path = tmp_path / "ring.json"
    master = Keyring.generate().rotated()  # two KEKs: both wrapping keys go to the roles that unwrap
    master.save(ring_path)
    out = tmp_path / "roles"
    result = _roles(tmp_path, monkeypatch, "--out", str(out), key_env={"STREAMGATE_MASTER_KEY_FILE": str(ring_path)})
    assert result.exit_code == 0, _output(result)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{r}.json" for r in ROLES)
    creds = {}
    for role in ROLES:
        path = out / f"{role}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        for b64 in _key_strings(ring_path):  # no raw KEK in any credential
            assert b64 not in text
        cred = Keyring.load(path)
        assert isinstance(cred, RoleKeyring) and cred.role == role
        creds[role] = cred
    _assert_no_key_material(_output(result), ring_path)

    # the gateway wraps, the reader unwraps the same blob (symmetric KEK: each could do both)
    blob = LocalKMS(creds["gateway"]).wrap(b"k" * 32, b"aad")
    assert LocalKMS(creds["reader"]).unwrap(blob, b"aad") == b"k" * 32
    assert LocalKMS(master).unwrap(blob, b"aad") == b"k" * 32
    # tokens: gateway and shredder tokenize like the master; the reader cannot
    assert Tokenizer(creds["gateway"]).token("user_id", "u1") == Tokenizer(master).token("user_id", "u1")
    assert Tokenizer(creds["shredder"]).token("user_id", "u1") == Tokenizer(master).token("user_id", "u1")
    with pytest.raises(KeyringError):
        Tokenizer(creds["reader"]).token("user_id", "u1")

    # tk2 person tokens (the secret comes from Redis; no connection is made here): same for both, no one else
    def tk2(ring: Keyring) -> tuple[str, str]:
        p = Pseudonyms(ring, redis.Redis(), "sg", domain="user_id")
        return p.lookup_id("u1"), p.token_from(b"s" * 32, "u1")

    assert tk2(creds["gateway"]) == tk2(creds["shredder"]) == tk2(master)
    for role in set(ROLES) - {"gateway", "shredder"}:
        with pytest.raises(KeyringError):
            tk2(creds[role])
    # signing: only the owner signs; verifiers hold public keys only
    for signer, owner, holders in (("erasure", "eraser", ["shredder"]), ("receipt", "shredder", ["verifier"]),
                                   ("snapshot", "learner", ["verifier"])):
        sig = sign(signing_key(creds[owner], signer), "t", b"m")
        for h in [*holders, owner]:
            verify(verify_key(creds[h], signer), "t", b"m", sig)
        verify(verify_key(master, signer), "t", b"m", sig)
        for other in ROLES:
            if other != owner:
                with pytest.raises(KeyringError):
                    signing_key(creds[other], signer)
    for role in ("eraser", "learner", "verifier", "shredder"):
        with pytest.raises(KeyringError):
            LocalKMS(creds[role])
    with pytest.raises(KeyringError):
        creds["gateway"].kek(master.primary_id)
    # a role credential cannot issue credentials
    again = _roles(tmp_path, monkeypatch, "--out", str(tmp_path / "x"),
                   key_env={"STREAMGATE_KEY_FILE": str(out / "gateway.json")})
    assert again.exit_code == 1 and "needs the master keyring" in _output(again)
    refused = _roles(tmp_path, monkeypatch, "--out", str(out), key_env={"STREAMGATE_MASTER_KEY_FILE": str(ring_path)})
    assert refused.exit_code == 1 and "refusing to overwrite" in _output(refused)


def test_generate_then_any_command_finds_the_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`keys generate` then a worker: no export needed (the default path under STREAMGATE_STATE_DIR)."""
    from stream.config import Settings

    monkeypatch.delenv("STREAMGATE_STATE_DIR", raising=False)
    for name in ("STREAMGATE_MASTER_KEY", "STREAMGATE_MASTER_KEY_FILE", "STREAMGATE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMGATE_STATE_DIR", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["keys", "generate"], prog_name="streamgate")
    assert result.exit_code == 0, _output(result)
    assert "export STREAMGATE" not in result.output and "no export needed" in result.output
    written = tmp_path / "home" / "keyring.json"
    assert Keyring.from_settings(Settings()).ids == tuple(_ids(written))
