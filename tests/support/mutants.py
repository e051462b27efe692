"""Deliberately broken versions of the privacy core, for tests that must catch them (issue 27's
mutation check: tests/mutation/test_mutants_retention.py). Never used outside tests."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stream.crypto.deks import _VALUE_VERSION, DataKey, DekProvider, _wrap_aad

__all__ = ["OneGlobalKeyProvider"]


class OneGlobalKeyProvider(DekProvider):
    """Mutant: every (person, epoch) gets its own key id and wrapped value, but the same key bytes."""

    GLOBAL = AESGCM.generate_key(bit_length=256)

    def _new_key(self, subject: str, epoch: int) -> tuple[DataKey, bytes]:
        key_id = self._new_key_id(subject, epoch)
        blob = self._kms.wrap(self.GLOBAL, _wrap_aad(subject, epoch, key_id))
        value = _VALUE_VERSION + b"." + key_id.encode("ascii") + b"." + blob
        return DataKey(subject, epoch, key_id, AESGCM(self.GLOBAL)), value
