"""streamgate: an event-streaming privacy gateway for Kafka clickstreams."""

__all__ = ["__version__"]

__version__ = "0.1.0"
