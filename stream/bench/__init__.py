"""Benchmarks: each prints its figure beside a same-run baseline, as a ratio."""

__all__: list[str] = []
