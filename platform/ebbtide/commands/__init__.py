"""The CLI's commands, one module per kind; `ebbtide.cli` imports a module only when its command runs.

serve     up, run, provision: running functions
clients   publish, dlq, outbox, top: talking to a running platform
tools     nats-config, new, build: working on the project's files
workload  demo, bench: the reference workload (ebbtide.workload)
rollout   shadow, canary: a candidate module beside the live one (ebbtide.rollout)
console   console, and the console process of `up --console` (ebbtide.console)
"""
