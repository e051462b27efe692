"""Erasure reaches beyond the DEKs (issue 13): dead letters sealed under the person's key,
token memos dropped on the shred channel, pseudonyms that unlink on erasure. Real Redis."""

from __future__ import annotations

import orjson
import pytest
from shred_helpers import Clock

from stream.components import build_dek_provider, build_gateway, redis_client
from stream.errors import KeyShreddedError
from stream.gateway.core import QUARANTINE_SUBJECT, RawRecord, unseal_dead_letter
from stream.retention.core import MemorySink, Shredder
from stream.retention.redis_store import RedisShredStore
from stream.schema import output_validator
from stream.synth import ClickstreamGenerator

pytestmark = pytest.mark.integration

E, R = 3600, 7200
T0 = 1_900_000_000.0


@pytest.fixture
def settings(settings_factory):
    return settings_factory(epoch_seconds=E, retention_seconds=R, dek_cache_max_staleness_seconds=30)


def shredder(settings, clock) -> Shredder:
    store = RedisShredStore(redis_client(settings), settings.redis_key_prefix)
    return Shredder(store, MemorySink(), worker="w1", epoch_seconds=E, retention_seconds=R, clock=clock)


def event(user_id: str, **over) -> dict:
    ev = next(iter(ClickstreamGenerator(seed=3).events(1)))
    return dict(ev, user_id=user_id, **over)


def test_dead_letters_of_a_person_die_with_the_person_quarantined_ones_survive(settings) -> None:
    clock = Clock(T0)
    gw = build_gateway(settings, clock=clock)
    person = orjson.dumps(event("usr_dead_letter", email="not an email"))  # schema violation, user_id parses
    nobody = b'{"user_id": 17, "oops": true'  # not JSON: no subject
    ok = orjson.dumps(event("usr_dead_letter"))
    result = gw.process([RawRecord("clicks.raw", 0, i, v, None) for i, v in enumerate([person, nobody, ok])])
    assert len(result.protected) == 1 and len(result.dead_letters) == 2
    dl_person, dl_nobody = (orjson.loads(d) for d in result.dead_letters)
    check = output_validator("dlq-record.v1")
    assert check(dl_person) == [] and check(dl_nobody) == []
    token = result.protected[0][0].decode()
    assert dl_person["sealed_for"] == token and dl_nobody["sealed_for"] == QUARANTINE_SUBJECT
    assert b"usr_dead_letter" not in result.dead_letters[0]
    assert unseal_dead_letter(dl_person, build_dek_provider(settings, clock=clock)) == person
    assert unseal_dead_letter(dl_nobody, build_dek_provider(settings, clock=clock)) == nobody

    shredder(settings, clock).erase(token, "req-dlq-1")

    deks = build_dek_provider(settings, clock=clock)
    with pytest.raises(KeyShreddedError):
        unseal_dead_letter(dl_person, deks)
    assert unseal_dead_letter(dl_nobody, deks) == nobody
    # the binding: claiming the quarantine key for the person's dead letter does not unseal it
    with pytest.raises(Exception) as info:
        unseal_dead_letter({**dl_person, "sealed_for": QUARANTINE_SUBJECT}, deks)
    assert type(info.value).__name__ in {"DecryptError", "KeyShreddedError"}
