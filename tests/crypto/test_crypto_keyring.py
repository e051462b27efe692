"""Keyring: parsing, files, rotation, derivation, secrecy of key material."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from stream.config import Settings
from stream.crypto.keyring import Keyring, key_fingerprint
from stream.crypto.kms import LocalKMS
from stream.errors import DecryptError, KeyringError

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
B64_A = base64.b64encode(KEY_A).decode()
B64_B = base64.b64encode(KEY_B).decode()


def _all_key_renderings(ring: Keyring) -> list[str]:
    out = []
    for key_id in ring.ids:
        key = ring.kek(key_id)
        out += [
            base64.b64encode(key).decode(),
            base64.urlsafe_b64encode(key).decode().rstrip("="),
            key.hex(),
            repr(key),
        ]
    return out


def test_generate_gives_one_random_key() -> None:
    a, b = Keyring.generate(), Keyring.generate()
    assert len(a.ids) == 1 and len(a.kek(a.primary_id)) == 32
    assert a.kek(a.primary_id) != b.kek(b.primary_id)
    assert a.primary_id == key_fingerprint(a.kek(a.primary_id))
    assert a.primary_id.startswith("k") and len(a.primary_id) == 11


def test_parse_plain_base64() -> None:
    ring = Keyring.parse(B64_A)
    assert ring.ids == (key_fingerprint(KEY_A),)
    assert ring.kek(ring.primary_id) == KEY_A
    # URL-safe alphabet, surrounding whitespace and missing padding are tolerated
    assert Keyring.parse(" " + base64.urlsafe_b64encode(KEY_A).decode().rstrip("=") + "\n").ids == ring.ids


def test_parse_keyring_list_oldest_first() -> None:
    ring = Keyring.parse(f"old:{B64_A}, new:{B64_B}")
    assert ring.ids == ("old", "new")
    assert ring.primary_id == "new"
    assert ring.kek("old") == KEY_A and ring.kek("new") == KEY_B


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        B64_A[:-4],  # 30ish bytes
        B64_A + "AAAA",  # too long
        B64_A.replace("A", "*", 1),  # not base64
        base64.b64encode(KEY_A + b"\x00").decode(),  # 33 bytes
        f"a:{B64_A},a:{B64_B}",  # duplicate id
        f"a:{B64_A},b:{B64_A}",  # duplicate key
        f"a:{B64_A},{B64_B}",  # entry without id
        f"bad id:{B64_A}",  # id with a space
        f"a:{B64_A},",  # trailing empty entry
        f":{B64_A}",  # empty id
        f"a:{B64_A[:-2]}",  # short key in list form
    ],
)
def test_parse_rejects_malformed_without_echoing_input(text: str) -> None:
    with pytest.raises(KeyringError) as info:
        Keyring.parse(text)
    message = str(info.value)
    assert message
    for fragment in {text.strip(), B64_A, B64_B, B64_A[:12], B64_B[:12], "bad id"} - {""}:
        assert fragment not in message


def test_kek_unknown_id() -> None:
    ring = Keyring.parse(B64_A)
    with pytest.raises(KeyringError):
        ring.kek("nope")


def test_repr_and_str_hide_key_material() -> None:
    ring = Keyring.parse(f"old:{B64_A},new:{B64_B}").rotated()
    for text in (repr(ring), str(ring), repr(LocalKMS(ring))):
        assert "old" in text and ring.primary_id in text
        for secret in _all_key_renderings(ring):
            assert secret not in text


def test_keyring_is_immutable_and_not_picklable() -> None:
    ring = Keyring.parse(B64_A)
    with pytest.raises(AttributeError):
        ring._entries = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_save_load_round_trip_mode_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even with a permissive umask the file must be 0600
    try:
        ring = Keyring.generate().rotated()
        path = tmp_path / "sub" / "keyring.json"
        ring.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Keyring.load(path)
    assert loaded.ids == ring.ids
    assert all(loaded.kek(i) == ring.kek(i) for i in ring.ids)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert [k["id"] for k in doc["keys"]] == list(ring.ids)
    assert all(isinstance(k["created"], str) and k["created"] for k in doc["keys"])
    assert [p.name for p in path.parent.iterdir()] == ["keyring.json"]  # no temp file left behind


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    first = Keyring.generate()
    first.save(path)
    second = Keyring.generate()
    with pytest.raises(KeyringError):
        second.save(path)
    assert Keyring.load(path).ids == first.ids
    second.save(path, overwrite=True)
    assert Keyring.load(path).ids == second.ids
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "content",
    [
        "not json " + B64_A,
        json.dumps({"version": 2, "keys": [{"id": "a", "key": B64_A}]}),
        json.dumps({"version": 1, "keys": []}),
        json.dumps({"version": 1, "keys": [{"id": "a", "key": B64_A[:-8]}]}),
        json.dumps({"version": 1, "keys": [{"id": "a b", "key": B64_A}]}),
        json.dumps({"version": 1, "keys": [{"key": B64_A}]}),
        json.dumps([B64_A]),
    ],
)
def test_load_rejects_malformed_without_echoing(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(content)
    with pytest.raises(KeyringError) as info:
        Keyring.load(path)
    assert B64_A not in str(info.value) and B64_A[:12] not in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="streamgate keys generate"):
        Keyring.load(tmp_path / "absent.json")


def test_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAMGATE_MASTER_KEY", "STREAMGATE_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert Keyring.from_settings(Settings(master_key=SecretStr(B64_A))).kek(key_fingerprint(KEY_A)) == KEY_A
    path = tmp_path / "ring.json"
    Keyring.parse(f"x:{B64_B}").save(path)
    assert Keyring.from_settings(Settings(master_key_file=path)).ids == ("x",)
    # the explicit key wins over the file
    assert Keyring.from_settings(Settings(master_key=SecretStr(B64_A), master_key_file=path)).ids == (
        key_fingerprint(KEY_A),
    )
    with pytest.raises(KeyringError) as info:
        Keyring.from_settings(Settings(state_dir=tmp_path / "home"))
    assert "STREAMGATE_MASTER_KEY" in str(info.value)
    assert "streamgate keys generate" in str(info.value)
    # the default keyring file in the state dir is found when nothing else is configured
    (tmp_path / "home").mkdir()
    Keyring.parse(f"d:{B64_B}").save(tmp_path / "home" / "keyring.json")
    assert Keyring.from_settings(Settings(state_dir=tmp_path / "home")).ids == ("d",)
    assert Keyring.from_settings(Settings(state_dir=tmp_path / "home", master_key_file=path)).ids == ("x",)


def test_rotation_newest_wraps_old_blobs_still_unwrap() -> None:
    old = Keyring.parse(B64_A)
    blob_old = LocalKMS(old).wrap(b"k" * 32, b"ctx")
    new = old.rotated()
    assert new.ids[:-1] == old.ids and len(new.ids) == 2
    assert new.primary_id != old.primary_id
    assert new.kek(old.primary_id) == KEY_A

    new_kms = LocalKMS(new)
    assert new_kms.unwrap(blob_old, b"ctx") == b"k" * 32
    blob_new = new_kms.wrap(b"n" * 32, b"ctx")
    assert new.primary_id.encode() in blob_new[:20]
    assert old.primary_id.encode() not in blob_new[:20]
    # the old ring does not hold the newest KEK, so the new blob is opaque to it
    with pytest.raises(DecryptError):
        LocalKMS(old).unwrap(blob_new, b"ctx")


def test_wrap_binding_and_tamper_are_opaque() -> None:
    kms = LocalKMS(Keyring.parse(B64_A))
    blob = kms.wrap(b"d" * 32, b"aad-1")
    messages = set()
    bad_inputs = [
        (blob, b"aad-2"),
        (blob[:-1], b"aad-1"),
        (b"", b"aad-1"),
        (b"\x02" + blob[1:], b"aad-1"),
    ] + [(blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1 :], b"aad-1") for i in range(len(blob))]
    for bad, aad in bad_inputs:
        with pytest.raises(DecryptError) as info:
            kms.unwrap(bad, aad)
        assert type(info.value) is DecryptError
        messages.add(str(info.value))
    assert messages == {str(DecryptError())}


def test_derive_per_purpose_stable_across_rotation() -> None:
    ring = Keyring.parse(B64_A)
    a, b = ring.derive("token/user"), ring.derive("token/session")
    assert len(a) == 32 and a != b
    assert a != ring.derive("dek-wrap")
    assert ring.derive("token/user") is a  # cached
    rotated = ring.rotated().rotated()
    assert rotated.derive("token/user") == a
    assert rotated.derive("token/session") == b
    # a different root re-keys everything derived
    assert Keyring.parse(B64_B).derive("token/user") != a
    assert len(ring.derive("x", 64)) == 64
    with pytest.raises(ValueError):
        ring.derive("")
