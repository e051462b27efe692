"""Thin adapters: the Faust workers and the Kafka loops over the pure core."""

__all__: list[str] = []
