"""The reference workload and its tools, outside the product's import path (`up` and `run` never load it).

orders      the ZEISS-shaped order and a seeded generator (`ebbtide publish`, Locust, tests)
demo        `ebbtide demo`: the 10,000-order burst with a live view and a summary
bench       `ebbtide bench`: every scenario, side by side
baselines   the same pipeline in FastStream and as a raw nats-py pass-through (for `bench`)
charts      the SVG charts of those runs
"""
