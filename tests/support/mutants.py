"""Deliberately broken versions of the privacy core, for tests that must catch them (issue 27's
mutation check: tests/mutation/test_mutants_retention.py). Never used outside tests."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stream.crypto.deks import _VALUE_VERSION, DataKey, DekProvider, _wrap_aad

__all__ = ["OneGlobalKeyProvider"]


class OneGlobalKeyProvider(DekProvider):
    """Mutant: every (person, epoch) gets its own key id and wrapped value, but the same key bytes."""

    GLOBAL = AESGCM.generate_key(bit_length=256)

    def _new_keys(self, subjects: list[str], epoch: int) -> list[tuple[DataKey, bytes]]:
        out = []
        for key, _value in super()._new_keys(subjects, epoch):  # (genuine key ids)
            blob = self._kms.wrap(self.GLOBAL, _wrap_aad(key.subject, epoch, key.key_id))
            value = _VALUE_VERSION + b"." + key.key_id.encode("ascii") + b"." + blob
            out.append((DataKey(key.subject, epoch, key.key_id, AESGCM(self.GLOBAL)), value))
        return out
