"""Other implementations of the reference pipeline, for `ebbtide bench` to compare against.

- `faststream_pipeline`: what a Python team would write instead (FastStream, pure Python handlers, the same
  validation, routing, streams, consumers and KV outbox as the Wasm functions). Needs the `baseline` extra.
- `raw_pipeline`: a hand-optimised nats-py pass-through (no validation, no Wasm): the practical NATS limit
  from Python on the machine.

Each runs as a process per role (`--role distributor|receiver-express|receiver-standard|all`) against
streams and consumers provisioned beforehand (`ebbtide.broker.provisioning`), and prints `ready` on stdout once
its consumers are bound.
"""

ROLES = ("distributor", "receiver-express", "receiver-standard")
READY_LINE = "ready"
