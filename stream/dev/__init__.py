"""The embedded development stack: a local Kafka-protocol broker (Tansu) and a local Redis."""

from __future__ import annotations

from stream.dev.stack import DevStack, StackInfo, ephemeral_stack

__all__ = ["DevStack", "StackInfo", "ephemeral_stack"]
