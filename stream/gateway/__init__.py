"""The protecting gateway: pure core (validation + policy) and the reader for authorized consumers."""

from stream.gateway.core import BatchResult, Gateway, RawRecord, unseal_dead_letter
from stream.gateway.reader import ProtectedEventReader

__all__ = ["BatchResult", "Gateway", "ProtectedEventReader", "RawRecord", "unseal_dead_letter"]
