"""The authorized reader of ``clicks.protected``: decrypts personal fields with the
master key. Used by ``streamgate decrypt`` and by consumers that hold the KEK."""

from __future__ import annotations

from typing import Any, Literal

from stream.crypto.deks import DekProvider
from stream.crypto.fields import decrypt_value, parse_ciphertext
from stream.errors import DecryptError, KeyShreddedError
from stream.schema import EventSchema

__all__ = ["SHREDDED_MASK", "ProtectedEventReader"]

SHREDDED_MASK = "[shredded]"


class ProtectedEventReader:
    """Decrypts the ``encrypt`` fields of protected events.

    ``on_shredded`` decides what a consumer gets for a field whose key was shredded:
    ``"raise"`` (a :class:`KeyShreddedError`), ``"null"`` or ``"mask"`` (:data:`SHREDDED_MASK`).
    Tampered or misplaced ciphertexts always raise :class:`DecryptError`.
    """

    def __init__(
        self,
        schema: EventSchema,
        deks: DekProvider,
        *,
        on_shredded: Literal["raise", "null", "mask"] = "raise",
    ) -> None:
        self.schema = schema
        self.deks = deks
        self.on_shredded = on_shredded
        self._encrypt_fields = tuple(schema.fields_with("encrypt"))

    def decrypt(self, event: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``event`` with every encrypted field decrypted."""
        schema_id = event.get("_schema")
        if schema_id != self.schema.name:
            raise DecryptError()
        subject = event.get(self.schema.subject_field)
        out = dict(event)
        for name in self._encrypt_fields:
            text = event.get(name)
            if text is None:
                continue
            if not isinstance(subject, str) or not isinstance(text, str):
                raise DecryptError()
            header = parse_ciphertext(text)
            try:
                key = self.deks.key_for_decrypt(subject, header.epoch, header.key_id)
            except ValueError:  # not a well-formed subject token: the event was tampered with
                raise DecryptError() from None
            except KeyShreddedError:
                if self.on_shredded == "raise":
                    raise
                out[name] = None if self.on_shredded == "null" else SHREDDED_MASK
                continue
            out[name] = decrypt_value(key, text, schema_id=schema_id, field_path=name)
        return out
