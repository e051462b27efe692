"""Known-answer tests: the formats are fixed, so these literals must never change.

Expected values are computed independently with hashlib/hmac (and checked
against literals produced once); they do not call the code under test to get
the answer. The KEK and DEK here are public test vectors, not secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stream.crypto.deks import DataKey, DekProvider, MemoryKeyStore
from stream.crypto.fields import decrypt_value, encrypt_value, parse_ciphertext
from stream.crypto.keyring import Keyring, key_fingerprint
from stream.crypto.kms import LocalKMS
from stream.crypto.tokens import PseudonymKeys, Tokenizer

KEK = bytes(range(32))
KEK_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
DEK = bytes(range(32, 64))
SUBJECT = "tk1_-qqLHF8uQ-CAzJx2JQ92Ic"
KEY_ID = "00112233445566ff"
EPOCH = 20000
SCHEMA = "clickstream-event.v1"
VALUE = {"email": "alice@example.com", "n": [1, 2.5, True, None]}

# Produced once by encrypt_value(DataKey(SUBJECT, EPOCH, KEY_ID, AESGCM(DEK)), VALUE, schema SCHEMA, field "email").
CIPHERTEXT_VECTOR = (
    "sg1.00112233445566ff.20000.OyvQQynjtzLpDQ6ZMAa6xpwGHzbErr0iPMwbR_A0SxPKcxujgcBUtAqo9qfKHbvH"
    "yVsbRj2ZunHqfRQZ1Fa3AFlp_33jz3Y75c-oVkl80A"
)
# Produced once: the stored (Redis) value of DEK for (SUBJECT, EPOCH, KEY_ID) wrapped by LocalKMS
# under keyring "root:<KEK>".
STORED_DEK_VECTOR = bytes.fromhex(
    "312e303031313232333334343535363666662e0104726f6f74bff2e9acbcec405a84de6a5b5d84fdfe18a4d9f796d6"
    "18b0c7bc8094b73df839a8c84ac9835695140e930d7a9e18583174b07346131b2a55e75e08a7"
)


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """RFC 5869 with HMAC-SHA256, written out with the stdlib (independent of the code under test)."""
    prk = hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def test_reference_hkdf_matches_rfc5869_case_3() -> None:
    # Validates the independent helper itself (RFC 5869 A.3: SHA-256, empty salt and info).
    okm = hkdf_sha256(b"\x0b" * 22, b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_key_fingerprint_known_answer() -> None:
    expected = "k" + hashlib.sha256(hkdf_sha256(KEK, b"streamgate/key-id")).hexdigest()[:10]
    assert expected == "kb3aa51cbc6"
    assert key_fingerprint(KEK) == expected
    assert Keyring.parse(KEK_B64).ids == ("kb3aa51cbc6",)


def test_derive_known_answer() -> None:
    ring = Keyring.parse(KEK_B64)
    expected = hkdf_sha256(KEK, b"streamgate/v1/token/user")
    assert expected.hex() == "1437d50718da3860a5a40e39896b1ed55eab7eb31ee56ecabe579c39284f9b31"
    assert ring.derive("token/user") == expected
    assert ring.derive("dek-wrap") == hkdf_sha256(KEK, b"streamgate/v1/dek-wrap")
    assert ring.derive("x", 48) == hkdf_sha256(KEK, b"streamgate/v1/x", 48)


@pytest.mark.parametrize(
    ("domain", "value", "literal"),
    [
        ("user", "alice@example.com", "tk1_-qqLHF8uQ-CAzJx2JQ92Ic"),
        ("user", "user-42", "tk1_ANZ_ilAyU3YHk69xsmu67o"),
        ("session", "user-42", "tk1_ZiTH7llMjXr_lsYNUPAxnm"),
        ("user", "", "tk1_9W9yOMly_oBlF55WPwnjPJ"),
    ],
)
def test_token_known_answer(domain: str, value: str, literal: str) -> None:
    key = hkdf_sha256(KEK, b"streamgate/v1/token/" + domain.encode())
    mac = hmac.new(key, value.encode(), hashlib.sha256).digest()
    expected = "tk1_" + base64.urlsafe_b64encode(mac).decode()[:22]
    assert expected == literal
    tokenizer = Tokenizer(Keyring.parse(KEK_B64))
    assert tokenizer.token(domain, value) == literal
    assert tokenizer.tokens(domain, [value, value]) == [literal, literal]


def test_tokens_stable_across_rotation_known_answer() -> None:
    ring = Keyring([("root", KEK, None)]).rotated().rotated()
    assert Tokenizer(ring).token("user", "alice@example.com") == "tk1_-qqLHF8uQ-CAzJx2JQ92Ic"


def test_ciphertext_vector_decrypts() -> None:
    key = DataKey(SUBJECT, EPOCH, KEY_ID, AESGCM(DEK))
    assert decrypt_value(key, CIPHERTEXT_VECTOR, schema_id=SCHEMA, field_path="email") == VALUE


def test_ciphertext_vector_matches_the_documented_format_independently() -> None:
    # Decode by hand from the format description: header, base64url body, length-prefixed AAD.
    version, key_id, epoch, b64 = CIPHERTEXT_VECTOR.split(".")
    assert (version, key_id, epoch) == ("sg1", KEY_ID, str(EPOCH))
    raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    nonce, body = raw[:12], raw[12:]
    aad = lp(b"sg1", SCHEMA.encode(), b"email", SUBJECT.encode(), str(EPOCH).encode(), KEY_ID.encode())
    assert orjson.loads(AESGCM(DEK).decrypt(nonce, body, aad)) == VALUE
    header = parse_ciphertext(CIPHERTEXT_VECTOR)
    assert (header.version, header.key_id, header.epoch, header.nonce, header.body) == (
        "sg1",
        KEY_ID,
        EPOCH,
        nonce,
        body,
    )


def test_encrypt_output_decrypts_with_independent_code() -> None:
    key = DataKey(SUBJECT, EPOCH, KEY_ID, AESGCM(DEK))
    text = encrypt_value(key, "bob@example.com", schema_id=SCHEMA, field_path="contact/email")
    assert text is not None
    prefix = f"sg1.{KEY_ID}.{EPOCH}."
    assert text.startswith(prefix)
    b64 = text[len(prefix) :]
    assert "=" not in b64
    raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    aad = lp(
        b"sg1", SCHEMA.encode(), b"contact/email", SUBJECT.encode(), str(EPOCH).encode(), KEY_ID.encode()
    )
    assert AESGCM(DEK).decrypt(raw[:12], raw[12:], aad) == b'"bob@example.com"'


def test_stored_dek_vector_unwraps_and_opens_the_ciphertext_vector() -> None:
    # The Redis value format and the LocalKMS wrap format are stable: a key stored by this
    # version is readable by the next one.
    blob = STORED_DEK_VECTOR.split(b".", 2)[2]
    assert blob[:6] == b"\x01\x04root"
    wrap_key = hkdf_sha256(KEK, b"streamgate/v1/dek-wrap")
    aad = (
        b"streamgate/v1/dek-wrap\x00"
        + blob[:6]
        + lp(b"streamgate/v1/dek", SUBJECT.encode(), b"20000", KEY_ID.encode())
    )
    assert AESGCM(wrap_key).decrypt(blob[6:18], blob[18:], aad) == DEK

    clock = [EPOCH * 86400.0 + 5]
    store = MemoryKeyStore(clock=lambda: clock[0])
    provider = DekProvider(
        store,
        LocalKMS(Keyring([("root", KEK, None)]).rotated()),  # rotation: the old KEK still unwraps
        epoch_seconds=86400,
        retention_seconds=86400,
        max_staleness_seconds=30,
        max_entries=10,
        clock=lambda: clock[0],
    )
    store.create_many([(SUBJECT, EPOCH, STORED_DEK_VECTOR, provider.expire_at(EPOCH))])
    key = provider.key_for_decrypt(SUBJECT, EPOCH, KEY_ID)
    assert decrypt_value(key, CIPHERTEXT_VECTOR, schema_id=SCHEMA, field_path="email") == VALUE


def test_keys_and_tk2_values_made_a_batch_at_a_time_match_the_documented_spelling() -> None:
    # Key ids, their tags, the wrap and the tk2 lookup ids, token and wrapped secret: each checked
    # with stdlib HMAC/HKDF and AES-GCM, independent of the batch code that builds them.
    ring = Keyring([("root", KEK, None)])
    wrap_key = hkdf_sha256(KEK, b"streamgate/v1/dek-wrap")
    kek_header = b"\x01\x04root"
    clock = EPOCH * 86400.0 + 5
    provider = DekProvider(MemoryKeyStore(clock=lambda: clock), LocalKMS(ring), epoch_seconds=86400,
                           retention_seconds=86400, max_staleness_seconds=30, max_entries=100, clock=lambda: clock)
    subjects = [f"tk1_person{i}" for i in range(5)]
    id_key = hkdf_sha256(KEK, b"streamgate/v1/dek-id")
    made = provider._new_keys(subjects, EPOCH)
    nonces = set()
    for subject, (key, value) in zip(subjects, made, strict=True):
        kid = key.key_id.encode()
        tag = hmac.new(id_key, lp(b"streamgate/v1/dek-id", subject.encode(), b"20000", kid[:8]), hashlib.sha256)
        assert kid[8:] == tag.digest()[:4].hex().encode()
        version, stored_id, blob = value.split(b".", 2)
        assert (version, stored_id, blob[:6]) == (b"1", kid, kek_header)
        nonces.add(blob[6:18])
        aad = b"streamgate/v1/dek-wrap\x00" + kek_header + lp(b"streamgate/v1/dek", subject.encode(), b"20000", kid)
        raw = AESGCM(wrap_key).decrypt(blob[6:18], blob[18:], aad)
        probe = key.aead.encrypt(b"\0" * 12, b"x", b"")
        assert AESGCM(raw).decrypt(b"\0" * 12, probe, b"") == b"x"  # the key in the DataKey is the wrapped one
    assert len(nonces) == len(subjects) and len({k.key_id for k, _ in made}) == len(subjects)

    keys = PseudonymKeys(ring, "user", LocalKMS(ring))
    lookup_key = hkdf_sha256(KEK, b"streamgate/v1/pseudonym-lookup/user")
    token_key = hkdf_sha256(KEK, b"streamgate/v1/token2/user")
    people = [(f"user-{i}", f"sg:pid:{{{i}}}") for i in range(5)]
    for (value, name), (token, stored) in zip(people, keys.new_values(people), strict=True):
        assert keys.lookup_id(value) == hmac.new(lookup_key, value.encode(), hashlib.sha256).digest()[:16].hex()
        head, tok, blob = stored.split(b".", 2)
        assert (head, tok) == (b"3", token.encode())
        aad = b"streamgate/v1/dek-wrap\x00" + kek_header + lp(b"streamgate/v1/pseudonym", name.encode(), tok)
        secret = AESGCM(wrap_key).decrypt(blob[6:18], blob[18:], aad)
        mac = hmac.new(token_key, secret + value.encode(), hashlib.sha256).digest()
        assert token == "tk2_" + base64.urlsafe_b64encode(mac).decode()[:22]
