"""Poison records: whatever one record holds, it is dead-lettered and the rest of its batch protected."""

from __future__ import annotations

import json

import orjson
import pytest

from stream.crypto.keyring import Keyring
from stream.crypto.tokens import PseudonymKeys, Tokenizer
from stream.gateway.core import QUARANTINE_SUBJECT, unseal_dead_letter
from stream.schema import output_validator
from stream.synth import ClickstreamGenerator
from tests.gateway.test_core import make_gateway, records

_EVENTS = list(ClickstreamGenerator(seed=7).events(20))
_GOOD = next(e for e in _EVENTS if e.get("email"))
_check_dlq = output_validator("dlq-record.v1")


def _raw(event: dict) -> bytes:
    return json.dumps(event).encode()  # stdlib: writes a lone surrogate as the escape "\udc00"


def _one_good_one_bad(bad: bytes):
    gw, deks, _ = make_gateway()
    good = orjson.dumps(_GOOD)
    result = gw.process(records([good, bad]))
    assert len(result.protected) == 1 and len(result.dead_letters) == 1
    rec = orjson.loads(result.dead_letters[0])
    assert _check_dlq(rec) == []
    assert unseal_dead_letter(rec, deks) == bad  # sealed, and ops get the exact bytes back
    return gw, result, rec


@pytest.mark.parametrize("uid", ["\udc00x", "x\ud800", "\udfff"])
def test_a_lone_surrogate_user_id_is_quarantined_not_a_crash(uid):
    bad = _raw({**_EVENTS[1], "user_id": uid})
    assert b"\\ud" in bad
    _gw, result, rec = _one_good_one_bad(bad)
    assert rec["reason"] == "not_json"  # orjson refuses it (so would any strict UTF-8 decoder)
    assert rec["sealed_for"] == QUARANTINE_SUBJECT  # names no person the schema could accept
    assert orjson.loads(result.protected[0][1])["email"].startswith("sg1.")


@pytest.mark.parametrize("field", ["session_id", "email", "phone", "user_agent", "page", "referrer"])
def test_a_lone_surrogate_elsewhere_is_sealed_for_the_person(field):
    ev = {**_GOOD, field: "a\udc00b"}  # the same person as the good record
    _gw, result, rec = _one_good_one_bad(_raw(ev))
    assert rec["reason"] == "not_json"
    assert rec["sealed_for"] == result.protected[0][0].decode()  # the person's token: erased with them


def test_a_surrogate_pair_escape_is_valid_json_and_passes():
    ev = {**_GOOD, "user_id": "u\U0001f600", "session_id": "s\U0001f600"}
    raw = _raw(ev)
    assert b"\\ud83d\\ude00" in raw  # an escaped pair is one character, not a lone surrogate
    gw, _, _ = make_gateway()
    result = gw.process(records([raw]))
    assert len(result.protected) == 1 and not result.dead_letters


def test_tokenizing_a_lone_surrogate_names_no_character_of_it():
    keyring = Keyring.generate()
    tok = Tokenizer(keyring)
    keys = PseudonymKeys(keyring, "user_id")
    for call in (lambda: tok.token("user_id", "\udc00secret"), lambda: tok.tokens("s", ["\udc00secret"]),
                 lambda: keys.lookup_id("\udc00secret"), lambda: keys.token_from(b"\0" * 32, "\udc00secret")):
        with pytest.raises(ValueError) as info:
            call()
        assert type(info.value) is ValueError and "secret" not in str(info.value) and "dc00" not in str(info.value)
