"""The gateway's pure core, without a broker (keys from an in-memory key store)."""

from __future__ import annotations

import base64
import json
import random

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream.crypto.deks import DekProvider, MemoryKeyStore
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.crypto.tokens import Tokenizer
from stream.errors import DecryptError, KeyShreddedError, KeyUnavailableError
from stream.faults import FAULT_KINDS, make_invalid
from stream.gateway.core import Gateway, RawRecord, unseal_dead_letter
from stream.gateway.reader import SHREDDED_MASK, ProtectedEventReader
from stream.schema import load_schema, output_validator
from stream.synth import ClickstreamGenerator
from tests.support.clock import Clock

SCHEMA = load_schema("clickstream-event.v1")
ENCRYPTED = SCHEMA.fields_with("encrypt")




def make_gateway(keyring: Keyring | None = None, store: MemoryKeyStore | None = None, clock: Clock | None = None,
                 provider: type[DekProvider] = DekProvider):
    keyring = keyring or Keyring.generate()
    clock = clock or Clock()
    store = store or MemoryKeyStore(clock=clock)
    deks = provider(store, LocalKMS(keyring), epoch_seconds=86400, retention_seconds=30 * 86400,
                       max_staleness_seconds=30, max_entries=10_000, clock=clock)
    return Gateway(SCHEMA, Tokenizer(keyring), deks, max_event_bytes=64 * 1024, clock=clock), deks, store


def records(payloads: list[bytes | None]) -> list[RawRecord]:
    return [RawRecord("clicks.raw", 0, i, p, 1_800_000_000_000) for i, p in enumerate(payloads)]


@pytest.fixture(scope="module")
def sample_events() -> list[dict]:
    return list(ClickstreamGenerator(seed=11).events(2_000))


def test_protected_events_follow_the_policy_and_the_output_schema(sample_events):
    gw, _deks, _ = make_gateway()
    result = gw.process(records([orjson.dumps(e) for e in sample_events]))
    assert len(result.protected) == len(sample_events) and not result.dead_letters
    check = output_validator("protected-event.v1")
    for (key, value), raw in zip(result.protected, sample_events, strict=True):
        out = orjson.loads(value)
        assert check(out) == []
        assert key.decode() == out["user_id"] and out["user_id"].startswith("tk1_")
        assert out["_schema"] == "clickstream-event.v1"
        assert "referrer" not in out  # drop
        for f in ("event_id", "ts", "page", "event_type", "category", "price", "device", "country", "quantity"):
            assert out.get(f) == raw.get(f)  # clear and ldp pass unchanged inside clicks.protected
        for f in ENCRYPTED:
            if raw.get(f) is None:
                assert out.get(f) is None  # null stays null (and absent stays absent)
            else:
                assert out[f].startswith("sg1.") and raw[f] not in out[f]


def test_round_trip_tokens_and_per_person_ciphertexts(sample_events):
    gw, deks, _ = make_gateway()
    out = [orjson.loads(v) for _, v in gw.process(records([orjson.dumps(e) for e in sample_events])).protected]
    reader = ProtectedEventReader(SCHEMA, deks)
    by_user: dict[str, set[str]] = {}
    for raw, prot in zip(sample_events, out, strict=True):
        back = reader.decrypt(prot)
        for f in ENCRYPTED:
            assert back.get(f) == raw.get(f)
        by_user.setdefault(raw["user_id"], set()).add(prot["user_id"])
    assert all(len(toks) == 1 for toks in by_user.values())  # stable per user
    assert len({next(iter(t)) for t in by_user.values()}) == len(by_user)  # distinct across users

    # the same email of two users gives different ciphertexts (and so does the same user twice)
    a, b = dict(sample_events[0]), dict(sample_events[0])
    a["user_id"], b["user_id"] = "alice", "bob"
    a["email"] = b["email"] = "same@example.com"
    pa, pb, pa2 = (orjson.loads(v) for _, v in gw.process(records([orjson.dumps(x) for x in (a, b, a)])).protected)
    assert pa["email"] != pb["email"] and pa["email"] != pa2["email"]
    assert reader.decrypt(pa)["email"] == reader.decrypt(pb)["email"] == "same@example.com"
    assert_per_person_keys(gw, deks, sample_events[0])


def assert_per_person_keys(gw: Gateway, deks: DekProvider, event: dict) -> None:
    """Alice's ciphertext, with Alice's own associated data, does not open under Bob's key with raw
    AES-GCM (so the binding is not what stops it: the key bytes differ); it does under Alice's."""
    from cryptography.exceptions import InvalidTag

    from tests.support.adversary import field_aad

    a, b = dict(event, user_id="alice", email="a@example.com"), dict(event, user_id="bob", email="b@example.com")
    pa, pb = (orjson.loads(v) for _, v in gw.process(records([orjson.dumps(a), orjson.dumps(b)])).protected)
    (_, kid_a, epoch, body), (_, kid_b, _, _) = pa["email"].split("."), pb["email"].split(".")
    key_a = deks.key_for_decrypt(pa["user_id"], int(epoch), kid_a)
    key_b = deks.key_for_decrypt(pb["user_id"], int(epoch), kid_b)
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    aad = field_aad(pa["_schema"], "email", pa["user_id"], int(epoch), kid_a)
    plain = key_a.aead.decrypt(raw[:12], raw[12:], aad).rstrip(b"\x00").removesuffix(b"\x80")  # length padding
    assert json.loads(plain) == "a@example.com"  # the control
    try:
        key_b.aead.decrypt(raw[:12], raw[12:], aad)
    except InvalidTag:
        return
    raise AssertionError("another person's data key opens the ciphertext: not per-person keys")


def test_one_global_data_key_is_caught_by_the_per_person_check(sample_events):
    """The check above is no proxy: a key store giving everyone the same key bytes fails it."""
    from tests.support.mutants import OneGlobalKeyProvider

    gw, deks, _ = make_gateway(provider=OneGlobalKeyProvider)
    with pytest.raises(AssertionError, match="not per-person keys"):
        assert_per_person_keys(gw, deks, sample_events[0])


def _flip(text: str, i: int) -> str:
    c = text[i]
    return text[:i] + ("A" if c != "A" else "B") + text[i + 1 :]


def test_tamper_move_and_flip_all_fail_with_the_one_error(sample_events):
    gw, deks, _ = make_gateway()
    reader = ProtectedEventReader(SCHEMA, deks)
    evs = [e for e in sample_events if e.get("email") and e.get("phone")]
    other = next(e for e in evs if e["user_id"] != evs[0]["user_id"])
    p1, p2 = (orjson.loads(v) for _, v in gw.process(records([orjson.dumps(evs[0]), orjson.dumps(other)])).protected)
    body_start = p1["email"].rindex(".") + 1
    attempts = []
    for i in range(body_start, len(p1["email"]), 5):  # flip characters of nonce, ciphertext and tag
        attempts.append({**p1, "email": _flip(p1["email"], i)})
    epoch_at = p1["email"].index(".", 4) + 1
    attempts.append({**p1, "email": p1["email"][:epoch_at] + "1" + p1["email"][epoch_at:]})  # epoch changed
    attempts.append({**p1, "phone": p1["email"]})  # moved to another field
    attempts.append({**p2, "email": p1["email"]})  # moved to another person's event
    attempts.append({**p1, "user_id": p2["user_id"]})  # the person token swapped
    attempts.append({**p1, "_schema": "other.v1"})
    attempts.append({**p1, "email": "sg1.garbage"})
    for forged in attempts:
        with pytest.raises(DecryptError) as info:
            reader.decrypt(forged)
        assert type(info.value) is DecryptError and str(info.value) == str(DecryptError())
    # A changed key id names a key that does not exist (any more): that reads as shredded, which is
    # still the one DecryptError family; the plaintext stays out of reach either way.
    forged = {**p1, "email": _flip(p1["email"], 4)}
    with pytest.raises(DecryptError):
        reader.decrypt(forged)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_fault_kind_is_dead_lettered_sealed_and_typed(sample_events, kind):
    gw, deks, _ = make_gateway()
    ev = next(e for e in sample_events if e.get("email"))
    _, raw = make_invalid(ev, random.Random(1), kind)
    result = gw.process(records([raw]))
    assert not result.protected and len(result.dead_letters) == 1
    rec = orjson.loads(result.dead_letters[0])
    assert output_validator("dlq-record.v1")(rec) == []
    expected = {
        "not_json": "not_json", "not_utf8": "not_utf8", "not_object": "not_object", "unknown_field": "unknown_field",
        "missing_field": "missing_field", "bad_email": "schema_violation", "bad_type": "schema_violation",
        "too_large": "too_large", "empty": "empty",
    }[kind]
    assert rec["reason"] == expected
    assert rec["source"] == {"topic": "clicks.raw", "partition": 0, "offset": 0, "timestamp_ms": 1_800_000_000_000}
    blob = result.dead_letters[0]
    for f in SCHEMA.sensitive_fields:
        if isinstance(ev.get(f), str):
            assert ev[f].encode() not in blob
    if kind == "too_large":  # never kept: a keyed digest and the size stand for it
        assert rec["sealed"] is None and rec["digest"] == gw.digest(raw) and rec["size"] == len(raw)
        assert unseal_dead_letter(rec, deks) is None
        return
    # authorized ops can unseal the original bytes, exactly
    assert unseal_dead_letter(rec, deks) == (raw or None)


def test_sealed_dead_letter_is_bound_to_its_source(sample_events):
    gw, deks, _ = make_gateway()
    _, raw = make_invalid(sample_events[0], random.Random(2), "not_json")
    rec = orjson.loads(gw.process(records([raw])).dead_letters[0])
    rec["source"]["offset"] = 99
    with pytest.raises(DecryptError):
        unseal_dead_letter(rec, deks)


class BrokenStore(MemoryKeyStore):
    def get_many(self, refs):
        raise KeyUnavailableError("key store unavailable")

    def create_many(self, items):
        raise KeyUnavailableError("key store unavailable")


def test_fails_closed_when_keys_cannot_be_had(sample_events):
    gw, _, _ = make_gateway(store=BrokenStore())
    with pytest.raises(KeyUnavailableError):
        gw.process(records([orjson.dumps(e) for e in sample_events[:50]]))
    # invalid input needs the quarantine key too: it is held, not passed through unsealed
    with pytest.raises(KeyUnavailableError):
        gw.process(records([b"not json"]))


def test_events_without_personal_values_need_no_key(sample_events):
    gw, _, _ = make_gateway(store=BrokenStore())
    ev = {k: v for k, v in sample_events[0].items() if k not in ENCRYPTED}
    result = gw.process(records([orjson.dumps(ev)]))
    assert len(result.protected) == 1 and result.keys_requested == 0


def test_shredded_key_gives_typed_error_or_replacement(sample_events):
    clock = Clock()
    gw, deks, store = make_gateway(clock=clock)
    ev = next(e for e in sample_events if e.get("email"))
    prot = orjson.loads(gw.process(records([orjson.dumps(ev)])).protected[0][1])
    store.delete(prot["user_id"], deks.epoch_of(clock()))
    deks.invalidate()
    with pytest.raises(KeyShreddedError):
        ProtectedEventReader(SCHEMA, deks).decrypt(prot)
    masked = ProtectedEventReader(SCHEMA, deks, on_shredded="mask").decrypt(prot)
    assert masked["email"] == SHREDDED_MASK
    assert ProtectedEventReader(SCHEMA, deks, on_shredded="null").decrypt(prot)["email"] is None


# st.text() never draws a lone surrogate (category Cs); the JSON escape of one ("\udc00") is
# refused by orjson but kept by the lenient fallback parser: draw them, inside strings too.
_chars = st.characters(exclude_categories=())
_lone = st.builds(lambda a, s, b: a + s + b, st.text(max_size=4),
                  st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=4))
_texts = st.text(_chars, max_size=20) | _lone
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(_chars, max_size=10), children,
                                                                      max_size=4),
    max_leaves=12,
)
def _dumps(value) -> bytes:
    return json.dumps(value).encode()  # stdlib: also big ints and lone surrogates (as escapes)


field_names = st.sampled_from([*SCHEMA.fields, "x", ""])
event_like = st.dictionaries(field_names, json_values, max_size=12)
_BASE = list(ClickstreamGenerator(seed=5).events(50))
near_valid = st.builds(lambda ev, changes: {**ev, **changes}, st.sampled_from(_BASE),
                       st.dictionaries(field_names, json_values, max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example([orjson.dumps(_BASE[0]), _dumps({**_BASE[1], "user_id": "\udc00x"}),
          _dumps({**_BASE[2], "session_id": "s\ud800"})])
@given(st.lists(st.binary(max_size=300) | event_like.map(_dumps) | json_values.map(_dumps) | near_valid.map(_dumps),
                max_size=20))
def test_arbitrary_input_ends_in_exactly_one_output(payloads):
    gw, _, _ = make_gateway(keyring=KEYRING)
    result = gw.process(records(payloads))
    assert result.total == len(payloads)
    for value in result.dead_letters:
        assert output_validator("dlq-record.v1")(orjson.loads(value)) == []
    for _, value in result.protected:
        assert output_validator("protected-event.v1")(orjson.loads(value)) == []


KEYRING = Keyring.generate()


def test_empty_batch():
    gw, _, _ = make_gateway()
    assert gw.process([]).total == 0


def test_dlq_path_names_only_schema_properties(sample_events):
    gw, _, _ = make_gateway()
    ev = dict(sample_events[0])
    ev["secret@example.com"] = 1
    rec = orjson.loads(gw.process(records([orjson.dumps(ev)])).dead_letters[0])
    assert rec["reason"] == "unknown_field" and rec["path"] is None
    assert b"secret@example.com" not in base64.b64decode(rec["sealed"].split(".")[-1] + "==", altchars=b"-_")


def test_padding_hides_email_and_ip_lengths(sample_events):
    gw, deks, _ = make_gateway()
    base = next(e for e in sample_events if e.get("email") and e.get("ip"))
    emails = ["a@b.io", "jane.doe123@example.org", "jane.doe.smith@long-company-name.com"]
    assert [len(e) for e in emails] == [6, 23, 36]
    ips = ["1.2.3.4", "255.255.255.255", "2001:db8::1", "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"]
    evs = [dict(base, email=e) for e in emails] + [dict(base, ip=ip) for ip in ips]
    result = gw.process(records([orjson.dumps(e) for e in evs]))
    assert not result.dead_letters
    out = [orjson.loads(v) for _, v in result.protected]
    assert len({len(o["email"]) for o in out[:3]}) == 1
    assert len({len(o["ip"]) for o in out[3:]}) == 1
    reader = ProtectedEventReader(SCHEMA, deks)
    assert [reader.decrypt(o)["email"] for o in out[:3]] == emails
    assert [reader.decrypt(o)["ip"] for o in out[3:]] == ips
