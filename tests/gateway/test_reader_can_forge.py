"""What a reader can do (issue 25): wrapping is symmetric, so the reader credential - which must unwrap
every data key to read - can also encrypt under them. A reader can forge a field that every other
reader decrypts as genuine. This test is the attack; docs/privacy.md ("What a reader can do") states it."""

from __future__ import annotations

import orjson
import pytest

from stream.components import build_dek_provider
from stream.crypto.fields import encrypt_value, parse_ciphertext
from stream.crypto.keyring import Keyring
from stream.schema import load_schema
from tests.support.shred import Clock, protect
from tests.support.shred import reader as shred_reader

pytestmark = pytest.mark.integration

T0 = 1_900_000_000.0


def test_a_reader_credential_forges_a_field_other_readers_accept(settings_factory, tmp_path) -> None:
    base = settings_factory(epoch_seconds=3600, retention_seconds=7200)
    master = Keyring.from_settings(base)
    schema = load_schema(base.schema_name)
    domains = sorted({f.token_domain for f in schema.fields.values() if f.token_domain})
    as_role = {}
    for role in ("gateway", "reader"):
        path = tmp_path / f"{role}.json"
        master.for_role(role, token_domains=domains, person_domain=schema.subject_domain).save(path)
        as_role[role] = base.model_copy(update={"master_key": None, "key_file": path})
    clock = Clock(T0)
    genuine = protect(as_role["gateway"], clock, ["usr_forge"], 1)[0]
    field = next(n for n, f in schema.fields.items() if f.policy == "encrypt" and genuine.get(n) is not None)
    head = parse_ciphertext(genuine[field])

    # the attacker: a reader credential and Redis read access, nothing of the gateway's
    key = build_dek_provider(as_role["reader"], clock=clock).key_for_decrypt(genuine[schema.subject_field],
                                                                             head.epoch, head.key_id)
    forged = dict(genuine)
    forged[field] = encrypt_value(key, "forged-by-a-reader", schema_id=genuine["_schema"], field_path=field,
                                  pad=schema.fields[field].pad)
    victim = shred_reader(as_role["reader"], clock)  # any other reader, or the master keyring
    assert victim.decrypt(forged)[field] == "forged-by-a-reader"  # indistinguishable from the gateway's
    assert victim.decrypt(genuine)[field] != "forged-by-a-reader"
    assert orjson.dumps(forged) != orjson.dumps(genuine)
