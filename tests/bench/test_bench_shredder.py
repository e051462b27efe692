"""``python -m stream.bench.shredder`` at a tiny size on the test Redis: counts, never timings."""

from __future__ import annotations

from collections.abc import Callable

from stream.bench.shredder import run_shredder_bench
from stream.config import Settings


def test_bench_shredder_small_claims_every_key(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    said: list[str] = []
    rounds = run_shredder_bench(settings.redis_url_or_dev(), keys=700, batch=200, rounds=2, say=said.append)
    assert [r.keys for r in rounds] == [700, 700] and len(said) == 2  # (it raises if a key was not claimed)
    assert all(r.cpu_seconds >= 0 and r.wall_seconds > 0 for r in rounds)
