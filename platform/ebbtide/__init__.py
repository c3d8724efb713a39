"""ebbtide: an event-driven WebAssembly message platform on NATS JetStream."""

__version__ = "0.1.0"
