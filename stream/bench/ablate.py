"""``python -m stream.bench.ablate``: the gateway engine with parts of its core taken out.

Where the gateway's CPU goes, measured from outside: each round runs the ``orjson`` passthrough
(``stream.bench.gateway``), then the gateway engine once per variant, on the same events and
broker, every leg metered from its first record and every gateway leg with new people (a fresh
key prefix) and a new group. Printed: each variant's events per CPU-second as a ratio to the
round's passthrough, per round and the median. The variants (benchmark-only replacements):

- ``full``: the gateway as it ships;
- ``noenc``: no field encryption (the fields stay in the clear; the records are smaller);
- ``nodecode``: ``orjson.loads`` instead of the one-pass decode and validation;
- ``noenc-nodecode``: both;
- ``null``: a core that passes each record through (the engine alone, ``bench gateway --engine-floor``).

What is left in ``noenc-nodecode`` is tokenization, keys, encoding and the engine: a target the
gateway cannot reach with those alone cannot be reached by speeding up encryption or decoding.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import uuid
from typing import Any

import orjson

import stream.gateway.core as gateway_core
from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.bench.gateway import _metered, _pass_through_core, _passthrough
from stream.bench.procs import SizingMeter
from stream.components import build_gateway
from stream.config import Settings, TopicNames
from stream.kafka import ensure_topics
from stream.synth import ClickstreamGenerator

__all__ = ["VARIANTS", "run_ablation"]

VARIANTS = ("full", "noenc", "nodecode", "noenc-nodecode", "null")


def run_ablation(settings: Settings, *, events: int, rounds: int, variants: tuple[str, ...] = VARIANTS,
                 say: Any = print) -> dict[str, list[float]]:
    """variant -> its CPU ratio to the round's ``orjson`` passthrough, one per round."""
    bootstrap = settings.kafka_bootstrap_or_dev()
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(raw=f"ablate.raw.{run}", protected=f"ablate.protected.{run}", dlq=f"ablate.dlq.{run}")
    settings = settings.model_copy(update={"topics": topics})
    ensure_topics(bootstrap, [topics.raw, topics.protected, topics.dlq, f"ablate.pass.{run}"], partitions=1)
    payloads = [orjson.dumps(e) for e in ClickstreamGenerator(seed=7).events(events)]
    publish(bootstrap, topics.raw, payloads)
    size = sum(map(len, payloads))
    encrypt_many = gateway_core.encrypt_many
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for i in range(rounds):
            meter = SizingMeter()
            _passthrough(bootstrap, topics.raw, f"ablate.pass.{run}", events, settings.batch_max_events,
                         settings.session_timeout_ms, codec="orjson", on_first=meter.restart)
            baseline = meter.stop("orjson", events, size).events_per_cpu_s
            for variant in variants:
                tag = f"ablate-{run}-{i}-{variant}"
                leg = settings.model_copy(update={"group_prefix": tag, "redis_key_prefix": tag})
                gateway = build_gateway(leg)
                gateway_core.encrypt_many = _no_encryption if "noenc" in variant else encrypt_many
                if "nodecode" in variant:
                    plan = gateway._plan
                    gateway._decode = lambda value, headers=None, plan=plan: (  # type: ignore[method-assign,misc]
                        orjson.loads(value), plan)
                meter = SizingMeter()
                core = _pass_through_core if variant == "null" else gateway.process
                gateway.process = _metered(core, meter)  # type: ignore[method-assign,assignment]
                GatewayEngine(leg, gateway, bootstrap=bootstrap).run(threading.Event(), max_events=events)
                ratio = meter.stop(variant, events, size).events_per_cpu_s / baseline
                ratios[variant].append(ratio)
                say(f"round {i + 1}: {variant:<15} {ratio:.3f} of the orjson passthrough ({1e6 / baseline:.1f} µs "
                    "of CPU per event)")
    finally:
        gateway_core.encrypt_many = encrypt_many
    return ratios


def _no_encryption(jobs: list[Any], *, schema_id: str) -> None:
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stream.bench.ablate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    args = ap.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    from stream.commands.common import bench_settings

    with bench_settings(Settings()) as settings:
        ratios = run_ablation(settings, events=args.events, rounds=args.rounds, variants=variants)
    print("\nCPU ratio to the orjson passthrough (events per CPU-second), median and rounds:")
    for variant, rs in ratios.items():
        print(f"  {variant:<15} {statistics.median(rs):.3f}   ({', '.join(f'{r:.3f}' for r in rs)})")


if __name__ == "__main__":
    main()
