"""ebbtide: an event-driven WebAssembly message platform on NATS JetStream."""

from . import lean_imports

__version__ = "0.1.0"

lean_imports.install()  # before anything imports nats: a function process then loads less (see lean_imports)
