"""One root exception, typed subclasses.

Error messages never carry an event's values: they name reason codes, field
paths declared in a schema, key ids and counts, nothing a producer sent.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnreachableError",
    "ConfigError",
    "DecryptError",
    "DevStackError",
    "InvalidExampleError",
    "KeyShreddedError",
    "KeyUnavailableError",
    "KeyringError",
    "LegacyPseudonymError",
    "ModelUpdateError",
    "ProduceTimeoutError",
    "SchemaPolicyError",
    "SnapshotError",
    "StreamgateError",
    "SubjectErasedError",
    "TopicMissingError",
    "TopicReadError",
]


class StreamgateError(Exception):
    """Root of every error streamgate raises on purpose."""


class ConfigError(StreamgateError):
    """A setting is missing or malformed."""


class TopicMissingError(StreamgateError):
    """A topic a reading command needs does not exist yet (``topic``): its writer never ran."""

    def __init__(self, message: str, *, topic: str = "") -> None:
        super().__init__(message)
        self.topic = topic


class TopicReadError(StreamgateError):
    """Reading ``topic`` failed: a fatal Kafka client error, or its end was not reached (no record,
    no end-of-partition) within the reader's stall bound."""

    def __init__(self, message: str, *, topic: str = "") -> None:
        super().__init__(message)
        self.topic = topic


class ProduceTimeoutError(StreamgateError):
    """A record could not be queued: the producer's local queue stayed full until the deadline, or
    the caller asked to stop while waiting (``stopped``)."""

    def __init__(self, message: str, *, topic: str = "", stopped: bool = False) -> None:
        super().__init__(message)
        self.topic = topic
        self.stopped = stopped


class BrokerUnreachableError(StreamgateError):
    """No Kafka broker answered at the configured bootstrap address (``bootstrap``)."""

    def __init__(self, message: str, *, bootstrap: str = "") -> None:
        super().__init__(message)
        self.bootstrap = bootstrap


class SchemaPolicyError(StreamgateError):
    """A schema is unusable: bad JSON Schema, or a property without a valid ``x-privacy`` policy."""


class KeyringError(ConfigError):
    """The master key (KEK keyring) is missing, malformed or does not hold a needed key id."""


class KeyUnavailableError(StreamgateError):
    """A data key could not be fetched or created (Redis down, KEK missing).

    The gateway fails closed on this error: the event is not emitted and not
    acknowledged; it is retried when the dependency returns.
    """


class SubjectErasedError(KeyUnavailableError):
    """No data key is created for a token whose person was erased (the erasure's marker): the batch
    is held and protected again under the person's next token. ``subjects``: the erased tokens (in
    process only; the message names none)."""

    def __init__(self, subjects: list[str]) -> None:
        super().__init__(f"data key refused: {len(subjects)} person token(s) erased meanwhile")
        self.subjects = subjects


class LegacyPseudonymError(KeyUnavailableError):
    """A clear (``2.``) tk2 secret met after ``streamgate keys rewrap-pseudonyms`` marked the store
    wrapped: planted, or restored from an old backup. Refused (fail closed) and counted."""


class DecryptError(StreamgateError):
    """A ciphertext could not be decrypted.

    Deliberately opaque: tampering, a wrong field/person/schema binding, a
    malformed string and a wrong key all raise this same error with the same
    message, so the error is no oracle.
    """

    def __init__(self, message: str = "ciphertext could not be decrypted") -> None:
        super().__init__(message)


class KeyShreddedError(DecryptError):
    """The data key of this ciphertext no longer exists: it was crypto-shredded
    (retention ended or the person asked for erasure). The plaintext is gone for good."""

    def __init__(self, message: str = "the data key of this ciphertext was shredded") -> None:
        super().__init__(message)


class DevStackError(StreamgateError):
    """The embedded development stack (local broker / local Redis) could not be started or reached."""


class InvalidExampleError(StreamgateError):
    """A record is not a valid local-DP report (private-feature.v1 / private-example.v1): learners refuse it."""


class SnapshotError(StreamgateError):
    """A model snapshot is malformed or fails authentication (it is never unpickled then)."""


class ModelUpdateError(StreamgateError):
    """A federated model update is malformed or fails authentication (it is never merged then)."""
