"""The one stream engine every worker plugs into (see :mod:`stream.engine.core`)."""

from stream.engine.contract import Out, Record, Result
from stream.engine.core import EngineFatalError, NotDeliveredError, StreamEngine

__all__ = ["EngineFatalError", "NotDeliveredError", "Out", "Record", "Result", "StreamEngine"]
