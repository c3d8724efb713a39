"""`ebbtide console`: the running platform as a live web page (optional extra `console`: Starlette, uvicorn).

graph     the pipeline from the manifest (subjects, functions, buckets, DLQ) and each edge's rate (pure)
live      status reports -> one row per function, and the scaling chart's history (pure)
views     what the pages receive: dead letters, shadow samples side by side, orders (pure)
service   reading NATS as the observer, one tick for every page at once; actions as admin
server    HTTP: the page, its event stream, reads and actions, and their safety checks
assets/   the page itself (HTML, CSS, JS) and uPlot, vendored with its license: no build step

Never loaded by `up` (its console is a process of its own) nor by a function process.
"""
