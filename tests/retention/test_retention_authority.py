"""Erasure authority and signed receipts, as pure units: only erasure requests signed by the eraser
key parse; any change to a signed field, another key, another signature context or no signature is
refused with one opaque error; a request id replayed with other content is a conflict; receipts are
signed, verify, and anything unsigned or altered does not. Known-answer vectors pin the encodings."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.crypto.keyring import Keyring
from stream.crypto.signing import canonical, encode_signature, sign, signing_key, verify_key
from stream.retention.core import (
    ERASURE_CONTEXT,
    ErasureConflictError,
    ErasureRejectedError,
    MemoryShredStore,
    MemorySink,
    Shredder,
    erasure_message,
    parse_erasure_request,
    sign_erasure_request,
)
from stream.retention.receipts import RECEIPT_CONTEXT, key_receipt, sign_receipt, verify_receipt
from stream.schema import output_validator

VALID = output_validator("audit-receipt.v1")
KAT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
AT = "2026-11-30T00:00:00.000Z"


def _signed(key: Ed25519PrivateKey = KAT_KEY, **kw: str) -> dict[str, str]:
    kw = {"user_id": "usr_kat", **kw} if "subject" not in kw else kw
    return sign_erasure_request(key, kw.pop("request_id", "req-kat-1"), requested_at=kw.pop("requested_at", AT),
                                **{"audience": "default", **kw})


def _parse(doc: object, key: Ed25519PrivateKey = KAT_KEY):  # type: ignore[no-untyped-def]
    return parse_erasure_request(orjson.dumps(doc), key.public_key())


# --------------------------------------------------------------------------- known answers
def test_canonical_encoding_known_answer() -> None:
    assert canonical(["ab", "", None, b"\x00"]) == (
        b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x00" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x01\x00")
    assert erasure_message("r", user_id="u", subject=None, requested_at=None, audience="default") == (
        b"\x00\x00\x00\x12erasure-request.v2" + b"\x00\x00\x00\x01r" + b"\x00\x00\x00\x07user_id"
        + b"\x00\x00\x00\x01u" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x07default")


def test_erasure_request_known_answer() -> None:
    """Regression vector (Ed25519 is deterministic): seed 00..1f, the documented canonical encoding."""
    doc = _signed()
    assert doc == {
        "request_id": "req-kat-1", "requested_at": AT, "audience": "default", "user_id": "usr_kat",
        "signer": "kb67b456817",
        "signature": "PFBM4StDvjLrQgOA4GSVQ_LLucHMg-9r1CT3qCyvHtf-WbC9GqNbIs1bkLT3iAKpxgbMd2a3NSVdqSovr5bLBw",
    }
    req = _parse(doc)
    assert (req.request_id, req.user_id, req.subject, req.requested_at) == ("req-kat-1", "usr_kat", None, AT)


def test_receipt_known_answer() -> None:
    r = sign_receipt(key_receipt(reason="retention", subject="tk1_kat", epoch=7, key_id="0123456789abcdef",
                                 request_id=None, at=1.9e9, worker="w", deadline=123), KAT_KEY)
    assert r["signer"] == "kb67b456817"
    assert r["signature"] == "75e7-0G0BuO--2P9Y7Q-EOf_VwMHfCwoRWbp0GAXTkp3GPbjbeL8NFkh6hWr4zq1WPTJzTotQV2H17TkAADNDA"
    assert verify_receipt(r, KAT_KEY.public_key()) and not VALID(r)


# --------------------------------------------------------------------------- erasure requests
def test_unsigned_requests_are_refused_as_unauthenticated_without_echoing_them() -> None:
    for doc in ({"request_id": "r1", "user_id": "usr_secret"},
                {"request_id": "r1", "subject": "tk1_SecretToken", "requested_at": AT},
                {**_signed(), "signature": "A" * 86},
                {**_signed(), "signature": 42},
                {k: v for k, v in _signed().items() if k != "signature"}):
        with pytest.raises(ErasureRejectedError) as info:
            _parse(doc)
        assert info.value.code == "unauthenticated"
        assert str(info.value) == "erasure request is not signed by the eraser key"


def test_another_key_or_another_context_does_not_verify() -> None:
    with pytest.raises(ErasureRejectedError):
        _parse(_signed(Ed25519PrivateKey.generate()))
    # a receipt-context signature over the very same bytes is no erasure signature
    doc = _signed()
    msg = erasure_message("req-kat-1", user_id="usr_kat", subject=None, requested_at=AT, audience="default")
    doc["signature"] = encode_signature(sign(KAT_KEY, RECEIPT_CONTEXT, msg))
    with pytest.raises(ErasureRejectedError):
        _parse(doc)
    doc["signature"] = encode_signature(sign(KAT_KEY, ERASURE_CONTEXT, msg))
    assert _parse(doc).user_id == "usr_kat"


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["request_id", "user_id", "requested_at", "audience"]),
       value=st.text(alphabet="abcdefXYZ0123456789-_.:", min_size=1, max_size=20))
def test_any_change_to_a_signed_field_is_refused(field: str, value: str) -> None:
    doc = _signed()
    if doc[field] == value:
        return
    doc[field] = value
    with pytest.raises(ErasureRejectedError):
        _parse(doc)


def test_swapping_user_id_for_subject_is_refused() -> None:
    doc = _signed()
    doc["subject"] = doc.pop("user_id")
    with pytest.raises(ErasureRejectedError) as info:
        _parse(doc)
    assert info.value.code == "unauthenticated"


def test_freshness_window_when_the_shredder_passes_its_clock() -> None:
    t0 = 1_764_460_800.0  # 2025-11-30T00:00:00Z
    doc = _signed(requested_at="2025-11-30T00:00:00.000Z")
    ok = parse_erasure_request(orjson.dumps(doc), KAT_KEY.public_key(), now=t0 + 3600, max_age_seconds=7200)
    assert ok.request_id == "req-kat-1"
    for now in (t0 + 7201, t0 - 301):  # too old; dated too far in the future
        with pytest.raises(ErasureRejectedError) as info:
            parse_erasure_request(orjson.dumps(doc), KAT_KEY.public_key(), now=now, max_age_seconds=7200)
        assert info.value.code == "stale_request"
    undated = _signed(requested_at="whenever")
    with pytest.raises(ErasureRejectedError) as info:
        parse_erasure_request(orjson.dumps(undated), KAT_KEY.public_key(), now=t0, max_age_seconds=7200)
    assert info.value.code == "stale_request"
    # unsigned AND stale: reported as unauthenticated (the signature is checked first)
    with pytest.raises(ErasureRejectedError) as info:
        parse_erasure_request(orjson.dumps({"request_id": "r", "user_id": "u"}), KAT_KEY.public_key(), now=t0,
                              max_age_seconds=1)
    assert info.value.code == "unauthenticated"


def test_malformed_requests_are_invalid_before_any_signature_check() -> None:
    with pytest.raises(ErasureRejectedError) as info:
        _parse({"request_id": "bad id", "user_id": "u"})
    assert info.value.code == "invalid_request"


def test_keys_come_from_the_keyring_and_role_credentials_interoperate() -> None:
    master = Keyring.generate()
    eraser, shredder = master.for_role("eraser"), master.for_role("shredder", token_domains=["user_id"])
    doc = sign_erasure_request(signing_key(eraser, "erasure"), "r-roles", subject="tk1_x", requested_at=AT,
                               audience="default")
    assert parse_erasure_request(orjson.dumps(doc), verify_key(shredder, "erasure")).subject == "tk1_x"
    assert parse_erasure_request(orjson.dumps(doc), verify_key(master, "erasure")).subject == "tk1_x"


def test_replayed_request_id_with_other_content_is_a_conflict() -> None:
    t = [100.0]
    shredder = Shredder(MemoryShredStore(lambda: t[0]), MemorySink(), worker="w", epoch_seconds=10,
                        retention_seconds=100, clock=lambda: t[0])
    first = _parse(_signed(subject="tk1_A", request_id="r-same"))
    again = _parse(_signed(subject="tk1_A", request_id="r-same"))
    other = _parse(_signed(subject="tk1_A", request_id="r-same", requested_at="2026-12-01T00:00:00.000Z"))
    assert first.digest == again.digest != other.digest
    shredder.erase("tk1_A", "r-same", digest=first.digest)
    assert shredder.erase("tk1_A", "r-same", digest=again.digest).repeated
    with pytest.raises(ErasureConflictError):
        shredder.erase("tk1_A", "r-same", digest=other.digest)


# --------------------------------------------------------------------------- receipts
def test_shredder_signs_every_receipt_and_rejections_name_nobody() -> None:
    key = Ed25519PrivateKey.generate()
    t = [100.0]
    store, sink = MemoryShredStore(lambda: t[0]), MemorySink()
    store.add_key("tk1_A", 10, "0123456789abcdef", 1000)
    shredder = Shredder(store, sink, worker="w", epoch_seconds=10, retention_seconds=100, clock=lambda: t[0],
                        receipt_key=key)
    shredder.erase("tk1_A", "r-1")
    rej = shredder.reject(request_id=None, error="unauthenticated", discriminator="privacy.erasure/0/3")
    assert len(sink.receipts) == 3
    for r in sink.receipts:
        assert verify_receipt(r, key.public_key()) and not VALID(r), r
    assert rej["kind"] == "erasure_rejected" and rej["subject"] is None and rej["request_id"] is None
    assert "tk1_A" not in orjson.dumps(rej).decode()


def test_unsigned_altered_or_foreign_receipts_do_not_verify() -> None:
    key = Ed25519PrivateKey.generate()
    r = sign_receipt(key_receipt(reason="erasure", subject="tk1_A", epoch=1, key_id=None, request_id="r",
                                 at=0.0, worker="w", deadline=None), key)
    assert verify_receipt(r, key.public_key())
    assert not verify_receipt({k: v for k, v in r.items() if k != "signature"}, key.public_key())
    assert not verify_receipt(dict(r, subject="tk1_B"), key.public_key())
    assert not verify_receipt(dict(r, worker="evil"), key.public_key())
    assert not verify_receipt(r, Ed25519PrivateKey.generate().public_key())
    assert not verify_receipt(sign_receipt(r, Ed25519PrivateKey.generate()), key.public_key())
    assert not verify_receipt("not a dict", key.public_key())
    assert sign_receipt(r, key) == r  # deterministic: a re-delivered receipt is byte-identical
