"""The authorized reader of ``clicks.protected``: decrypts personal fields with the
master key. Used by ``streamgate decrypt`` and by consumers that hold the KEK.

Consumer SDK: :meth:`ProtectedEventReader.read` returns a :class:`ReadResult` whose
event holds a typed :class:`Shredded` marker in place of every field whose key was
crypto-shredded (retention ended, or the person was erased), so a consumer never
crashes and never stalls a partition on a shredded record; ``result.replaced("null")``
/ ``("mask")`` gives the plain-JSON form. :meth:`ProtectedEventReader.decrypt` is the
same with the reader's configured ``on_shredded`` applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from stream.crypto.deks import DekProvider
from stream.crypto.fields import decrypt_value, parse_ciphertext
from stream.errors import DecryptError, KeyShreddedError
from stream.schema import EventSchema

__all__ = ["SHREDDED_MASK", "ProtectedEventReader", "ReadResult", "Shredded"]

SHREDDED_MASK = "[shredded]"


@dataclass(frozen=True)
class Shredded:
    """Stands in for a field whose data key was shredded: the plaintext is gone for good.

    ``epoch`` and ``key_id`` come from the ciphertext's header (they are not secret)."""

    field: str
    epoch: int
    key_id: str

    def __bool__(self) -> bool:  # a shredded field is "no value"
        return False


@dataclass(frozen=True)
class ReadResult:
    """One decrypted event. ``event`` holds :class:`Shredded` markers where keys are gone."""

    event: dict[str, Any]
    shredded: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when no field was shredded."""
        return not self.shredded

    def replaced(self, mode: Literal["null", "mask"] = "null") -> dict[str, Any]:
        """The event as plain JSON: shredded fields become ``None`` or :data:`SHREDDED_MASK`."""
        if not self.shredded:
            return dict(self.event)
        out = dict(self.event)
        for name in self.shredded:
            out[name] = None if mode == "null" else SHREDDED_MASK
        return out


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
        """A copy of ``event`` with every encrypted field decrypted; shredded fields per ``on_shredded``."""
        result = self.read(event)
        if result.shredded and self.on_shredded == "raise":
            raise KeyShreddedError()
        return result.replaced("null" if self.on_shredded == "null" else "mask")

    def read(self, event: dict[str, Any]) -> ReadResult:
        """Decrypt ``event``; fields whose key was shredded become :class:`Shredded` markers (never an
        exception). Tampered or misplaced ciphertexts raise :class:`DecryptError`; an unreachable key
        store raises :class:`~stream.errors.KeyUnavailableError` (retry: nothing is known yet)."""
        schema_id = event.get("_schema")
        if schema_id != self.schema.name:
            raise DecryptError()
        subject = event.get(self.schema.subject_field)
        out = dict(event)
        shredded: list[str] = []
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
                out[name] = Shredded(name, header.epoch, header.key_id)
                shredded.append(name)
                continue
            out[name] = decrypt_value(key, text, schema_id=schema_id, field_path=name)
        return ReadResult(out, tuple(shredded))
