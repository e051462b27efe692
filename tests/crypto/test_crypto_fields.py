"""The sg1 field ciphertext: round trips, binding, tamper detection, opaque errors."""

from __future__ import annotations

import base64
import dataclasses
import string
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.crypto.deks import DataKey
from stream.crypto.fields import (
    CIPHERTEXT_PREFIX,
    decrypt_value,
    encrypt_fields,
    encrypt_many,
    encrypt_value,
    is_ciphertext,
    parse_ciphertext,
)
from stream.errors import DecryptError, KeyShreddedError

SCHEMA = "clickstream-event.v1"
OPAQUE = str(DecryptError())


def make_key(subject: str = "tk1_alice", epoch: int = 7, key_id: str = "0123456789abcdef") -> DataKey:
    return DataKey(subject, epoch, key_id, AESGCM(AESGCM.generate_key(bit_length=256)))


KEY = make_key()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@given(json_values.filter(lambda v: v is not None), st.text(min_size=1, max_size=20))
@settings(max_examples=300, deadline=None)
def test_round_trip_any_json_value(value: Any, field_path: str) -> None:
    text = encrypt_value(KEY, value, schema_id=SCHEMA, field_path=field_path)
    assert isinstance(text, str) and text.startswith(CIPHERTEXT_PREFIX + ".")
    assert is_ciphertext(text)
    assert decrypt_value(KEY, text, schema_id=SCHEMA, field_path=field_path) == value


@given(st.text(), st.text(), st.text(), st.text())
@settings(max_examples=200, deadline=None)
def test_binding_encoding_is_unambiguous(schema_a: str, field_a: str, schema_b: str, field_b: str) -> None:
    # "a|b" + "c" must not collide with "a" + "b|c": any other (schema, field) pair fails.
    text = encrypt_value(KEY, 1, schema_id=schema_a, field_path=field_a)
    if (schema_a, field_a) == (schema_b, field_b):
        assert decrypt_value(KEY, text, schema_id=schema_b, field_path=field_b) == 1
    else:
        with pytest.raises(DecryptError):
            decrypt_value(KEY, text, schema_id=schema_b, field_path=field_b)


@pytest.mark.parametrize(
    ("schema_a", "field_a", "schema_b", "field_b"), [("a|b", "c", "a", "b|c"), ("ab", "", "a", "b")]
)
def test_binding_separator_collisions(schema_a: str, field_a: str, schema_b: str, field_b: str) -> None:
    text = encrypt_value(KEY, "x", schema_id=schema_a, field_path=field_a)
    with pytest.raises(DecryptError):
        decrypt_value(KEY, text, schema_id=schema_b, field_path=field_b)


@given(st.dictionaries(st.sampled_from(["email", "ip", "phone", "other"]), json_values, max_size=4))
@settings(max_examples=200, deadline=None)
def test_encrypt_fields_is_encrypt_value_per_field(doc: dict[str, Any]) -> None:
    spec = (("email", (64, 128)), ("ip", None), ("phone", (32,)))
    out = dict(doc)
    encrypt_fields(KEY, out, spec, schema_id=SCHEMA)
    assert out.keys() == doc.keys() and out.get("other") == doc.get("other")
    for name, pad in spec:
        if doc.get(name) is None:
            assert out.get(name) == doc.get(name)
            continue
        assert decrypt_value(KEY, out[name], schema_id=SCHEMA, field_path=name) == doc[name]
        same = encrypt_value(KEY, doc[name], schema_id=SCHEMA, field_path=name, pad=pad)
        assert len(out[name]) == len(same) and out[name] != same  # same padding, fresh nonce


def test_encrypt_many_is_encrypt_fields_per_event_with_unique_nonces() -> None:
    """A batch over two nonce blocks (4,096 values each), two people, nulls and absent fields: every
    value decrypts under its own person and field, has encrypt_value's length, and no nonce recurs."""
    spec = (("email", (64, 128)), ("ip", None), ("phone", (32,)))
    bob = make_key(subject="tk1_bob", key_id="fedcba9876543210")
    docs = [{"email": f"p{i}@example.com", "ip": None if i % 3 == 0 else f"10.0.{i % 256}.1", "other": i}
            | ({"phone": "+1 555 0100"} if i % 2 else {}) for i in range(4500)]
    jobs = [(KEY if i % 2 else bob, dict(d), spec) for i, d in enumerate(docs)]
    encrypt_many(jobs, schema_id=SCHEMA)
    nonces = []
    for (key, out, _), doc in zip(jobs, docs, strict=True):
        assert out.keys() == doc.keys() and out["other"] == doc["other"]
        for name, pad in spec:
            if doc.get(name) is None:
                assert out.get(name) == doc.get(name)
                continue
            assert decrypt_value(key, out[name], schema_id=SCHEMA, field_path=name) == doc[name]
            assert len(out[name]) == len(encrypt_value(key, doc[name], schema_id=SCHEMA, field_path=name, pad=pad))
            nonces.append(parse_ciphertext(out[name]).nonce)
    assert len(nonces) > 2 * 4096 and len(set(nonces)) == len(nonces)
    with pytest.raises(DecryptError):  # bound to the person
        decrypt_value(bob, jobs[1][1]["email"], schema_id=SCHEMA, field_path="email")


@pytest.mark.parametrize("pad", [(32, 64, 128), (48,), (8192,)])
def test_encrypt_many_pads_every_length_as_pad_plaintext_does(pad) -> None:
    """Every plaintext length around and beyond the buckets (the batch path pads from a table; the
    last bucket's multiples and buckets over 4 KiB take pad_plaintext)."""
    docs = [{"v": "x" * n} for n in range(0, 300)]
    jobs = [(KEY, dict(d), (("v", pad),)) for d in docs]
    encrypt_many(jobs, schema_id=SCHEMA)
    for (_, out, _), doc in zip(jobs, docs, strict=True):
        assert decrypt_value(KEY, out["v"], schema_id=SCHEMA, field_path="v") == doc["v"]
        assert len(out["v"]) == len(encrypt_value(KEY, doc["v"], schema_id=SCHEMA, field_path="v", pad=pad))


def test_none_stays_none() -> None:
    assert encrypt_value(KEY, None, schema_id=SCHEMA, field_path="email") is None
    assert decrypt_value(KEY, None, schema_id=SCHEMA, field_path="email") is None


def test_random_nonce_and_per_person_keys() -> None:
    a = encrypt_value(KEY, "alice@example.com", schema_id=SCHEMA, field_path="email")
    b = encrypt_value(KEY, "alice@example.com", schema_id=SCHEMA, field_path="email")
    assert a is not None and b is not None and a != b
    assert parse_ciphertext(a).nonce != parse_ciphertext(b).nonce
    bob = make_key(subject="tk1_bob", key_id="fedcba9876543210")
    c = encrypt_value(bob, "alice@example.com", schema_id=SCHEMA, field_path="email")
    assert c is not None and len({t.split(".")[3] for t in (a, b, c)}) == 3  # bodies, not whole strings
    assert all("alice" not in t for t in (a, b, c))
    # what opens a ciphertext is the key material AND the person it is bound to, each on its own:
    same_label = dataclasses.replace(KEY, aead=AESGCM(AESGCM.generate_key(bit_length=256)))  # other key bytes
    moved = dataclasses.replace(KEY, subject="tk1_bob")  # the same key bytes, another person
    twin = dataclasses.replace(KEY)  # the same key and binding: the control that it can open
    assert decrypt_value(twin, a, schema_id=SCHEMA, field_path="email") == "alice@example.com"
    for wrong in (same_label, moved):
        with pytest.raises(DecryptError):
            decrypt_value(wrong, a, schema_id=SCHEMA, field_path="email")


def test_ciphertext_format_header() -> None:
    text = encrypt_value(KEY, "x", schema_id=SCHEMA, field_path="email")
    assert text is not None
    version, key_id, epoch, body = text.split(".")
    assert (version, key_id, epoch) == ("sg1", KEY.key_id, "7")
    assert "=" not in body and "+" not in body and "/" not in body
    header = parse_ciphertext(text)
    assert (header.version, header.key_id, header.epoch, len(header.nonce)) == ("sg1", KEY.key_id, 7, 12)
    assert len(header.body) == len(b'"x"') + 16


def _expect_opaque(key: DataKey, text: Any, *, schema_id: str = SCHEMA, field_path: str = "email") -> None:
    with pytest.raises(DecryptError) as info:
        decrypt_value(key, text, schema_id=schema_id, field_path=field_path)
    assert type(info.value) is DecryptError
    assert str(info.value) == OPAQUE
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_every_single_character_change_is_detected() -> None:
    text = encrypt_value(KEY, {"email": "alice@example.com"}, schema_id=SCHEMA, field_path="email")
    assert text is not None
    alphabet = string.ascii_letters + string.digits + "-_.=+/ \n:é\x00"
    tried = 0
    for i, original in enumerate(text):
        for ch in alphabet:
            if ch == original:
                continue
            tampered = text[:i] + ch + text[i + 1 :]
            _expect_opaque(KEY, tampered)
            tried += 1
    assert tried > 1000


def test_every_bit_flip_of_the_body_is_detected() -> None:
    text = encrypt_value(KEY, "alice@example.com", schema_id=SCHEMA, field_path="email")
    header = parse_ciphertext(text)  # type: ignore[arg-type]
    raw = header.nonce + header.body
    prefix = text.rsplit(".", 1)[0] + "."  # type: ignore[union-attr]
    for i in range(len(raw)):
        for bit in (1, 0x80):
            flipped = raw[:i] + bytes([raw[i] ^ bit]) + raw[i + 1 :]
            _expect_opaque(KEY, prefix + base64.urlsafe_b64encode(flipped).decode().rstrip("="))


def test_truncation_extension_and_garbage() -> None:
    # 18 chars -> 20 bytes of JSON -> 48-byte body -> 64 base64 chars (a multiple of 4)
    text = encrypt_value(KEY, "abcdefghijklmnopqr", schema_id=SCHEMA, field_path="email")
    assert text is not None and len(text.rsplit(".", 1)[1]) == 64
    # well-formed but not authentic: structure passes, decryption fails
    for bad in [text[:-4], text + "AA", text + "AAAA", text[:-1] + ("A" if text[-1] != "A" else "Q")]:
        assert is_ciphertext(bad)
        _expect_opaque(KEY, bad)
    # malformed: neither parses nor decrypts
    malformed = [
        text + "A",  # 65 chars: 1 mod 4 is never base64
        text[:-3],
        text + "AB",  # non-canonical: unused trailing bits set
        text + "AAB",
        text + "=",
        text + "==",
        text + ".",
        "",
        "sg1",
        "sg1...",
        text.replace("sg1", "sg2", 1),
        text.replace(".", ":"),
        " " + text,
        text + "\n",
        42,
        b"bytes",
        ["list"],
        "sg1.0123456789abcdef.7.",
        "sg1.0123456789abcdef.7.AAAA",  # body shorter than nonce + tag
    ]
    for bad in malformed:
        assert not is_ciphertext(bad)
        _expect_opaque(KEY, bad)


def test_wrong_binding_all_opaque_with_identical_message() -> None:
    text = encrypt_value(KEY, "alice@example.com", schema_id=SCHEMA, field_path="email")
    assert text is not None
    # another field / schema
    _expect_opaque(KEY, text, field_path="phone")
    _expect_opaque(KEY, text, schema_id="clickstream-event.v2")
    # another person's key (different key id)
    _expect_opaque(make_key(subject="tk1_bob", key_id="fedcba9876543210"), text)
    # same key bytes and key id, but bound to another person / epoch: AAD catches it
    _expect_opaque(dataclasses.replace(KEY, subject="tk1_bob"), text)
    _expect_opaque(dataclasses.replace(KEY, epoch=8), text)
    # header claims another epoch / key id (even with a key that matches the claim)
    other_epoch = text.replace(".7.", ".8.", 1)
    _expect_opaque(KEY, other_epoch)
    _expect_opaque(dataclasses.replace(KEY, epoch=8), other_epoch)
    other_id = text.replace(KEY.key_id, "0123456789abcdee", 1)
    _expect_opaque(KEY, other_id)
    _expect_opaque(dataclasses.replace(KEY, key_id="0123456789abcdee"), other_id)
    # non-canonical epoch spelling
    _expect_opaque(KEY, text.replace(".7.", ".07.", 1))
    # the right everything still works
    assert decrypt_value(KEY, text, schema_id=SCHEMA, field_path="email") == "alice@example.com"


def test_error_is_not_the_shredded_error() -> None:
    # Tampering must never masquerade as shredding (consumers treat those differently).
    text = encrypt_value(KEY, 1, schema_id=SCHEMA, field_path="n")
    with pytest.raises(DecryptError) as info:
        decrypt_value(KEY, text[:-2] + "AA", schema_id=SCHEMA, field_path="n")  # type: ignore[index]
    assert not isinstance(info.value, KeyShreddedError)


def test_unserializable_value_error_names_field_not_value() -> None:
    with pytest.raises(TypeError) as info:
        encrypt_value(KEY, {"secret-value-123"}, schema_id=SCHEMA, field_path="email")
    assert "email" in str(info.value) and "secret-value-123" not in str(info.value)


def test_data_key_repr_hides_key() -> None:
    raw = AESGCM.generate_key(bit_length=256)
    key = DataKey("tk1_a", 1, "0123456789abcdef", AESGCM(raw))
    text = repr(key)
    assert "tk1_a" in text and "aead" not in text and raw.hex() not in text and repr(raw) not in text


@given(st.binary(max_size=700), st.sampled_from([(16,), (16, 32, 64), (48,), (64, 128, 256)]))
@settings(max_examples=300, deadline=None)
def test_padding_round_trips_and_lands_in_a_bucket(body: bytes, buckets: tuple[int, ...]) -> None:
    from stream.crypto.fields import pad_plaintext, unpad_plaintext

    plain = body.rstrip(b"\x00\x80") + b'"'  # JSON text never ends in 0x00 / 0x80
    padded = pad_plaintext(plain, buckets)
    assert len(padded) in buckets or len(padded) % buckets[-1] == 0
    assert len(padded) > len(plain) and unpad_plaintext(padded) == plain
    assert unpad_plaintext(plain) == plain  # unpadded (legacy) plaintexts read as before


def test_padded_values_decrypt_and_hide_their_length() -> None:
    key = make_key()
    values = ["a@b.io", "x" * 17 + "@b.io", "y" * 30 + "@b.io"]
    cts = [encrypt_value(key, v, schema_id=SCHEMA, field_path="email", pad=(64, 128, 256)) for v in values]
    assert len({len(c or "") for c in cts}) == 1
    assert [decrypt_value(key, c, schema_id=SCHEMA, field_path="email") for c in cts] == values
    # a longer value moves to the next bucket; unpadded ones keep decrypting
    assert len(encrypt_value(key, "z" * 70, schema_id=SCHEMA, field_path="email", pad=(64, 128)) or "") > len(cts[0] or "")
    plain = encrypt_value(key, "a@b.io", schema_id=SCHEMA, field_path="email")
    assert decrypt_value(key, plain, schema_id=SCHEMA, field_path="email") == "a@b.io"


def test_bad_padding_is_the_one_opaque_error() -> None:
    key = make_key()
    head = encrypt_value(key, 1, schema_id=SCHEMA, field_path="f").rsplit(".", 1)[0]  # type: ignore[union-attr]
    import os

    nonce = os.urandom(12)
    from stream.crypto.fields import _aad_head, _key_parts

    body = nonce + key.aead.encrypt(nonce, b"1\x00\x00", _aad_head(SCHEMA, "f") + _key_parts(key)[1])
    forged = head + "." + base64.urlsafe_b64encode(body).decode().rstrip("=")
    with pytest.raises(DecryptError, match=OPAQUE):
        decrypt_value(key, forged, schema_id=SCHEMA, field_path="f")
