"""Moved to :mod:`stream.engine.gc` (the engine owns its process tuning); kept for importers."""

from stream.engine.gc import ENGINE_GC_THRESHOLDS, relaxed_gc

__all__ = ["ENGINE_GC_THRESHOLDS", "relaxed_gc"]
